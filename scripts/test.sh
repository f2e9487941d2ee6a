#!/usr/bin/env bash
# Set up .venv with the test tools and run the whole test suite (arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh test
. .venv/bin/activate
exec python -m pytest "$@"
