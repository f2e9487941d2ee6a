#!/usr/bin/env bash
# Set up .venv with the test tools and run the whole test suite (arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh test
# The web page tests drive Debian's chromium (never a downloaded browser). CI runs as root on Debian:
# install it when missing; if that fails, the run goes on and those tests skip, saying why.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  echo "scripts/test.sh: installing chromium for the web page tests" >&2
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }; } >/dev/null 2>&1 \
    || echo "scripts/test.sh: could not install chromium; the browser tests will be skipped" >&2
fi
. .venv/bin/activate
exec python -m pytest "$@"
