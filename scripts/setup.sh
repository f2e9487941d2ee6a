#!/usr/bin/env bash
# Create .venv (when missing) and install wanserve into it. `scripts/setup.sh test` adds the test tools.
# An installed torch (CUDA, Ascend or CPU build) is kept; otherwise TORCH_SPEC (default torch==2.13.0)
# is installed. On a CUDA machine pick your build first, e.g. TORCH_SPEC="torch --index-url ...".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086
  python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
fi
extras=${1:-}
python -m pip install -q -e ".${extras:+[$extras]}"
