#!/usr/bin/env bash
# Set up .venv and serve the built-in demo model (random weights: its videos are noise): the web
# page, the original API and the OpenAI-compatible API at http://127.0.0.1:8088 until Ctrl-C.
# SERVER_HOST / SERVER_PORT / MODEL_CKPT_DIR (and every other setting) apply as usual.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
host="${SERVER_HOST:-127.0.0.1}"
[ "$host" = "0.0.0.0" ] && host=127.0.0.1
url="http://${host}:${SERVER_PORT:-8088}"
echo "wanserve: open ${url}/ (web page) or ${url}/docs (API); Ctrl-C stops it. Try:"
echo "  curl -s -X POST ${url}/submit -H 'Content-Type: application/json' -d '{\"prompt\": \"a cat walks on the grass\"}'"
exec wanserve serve
