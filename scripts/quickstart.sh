#!/usr/bin/env bash
# Set up .venv and generate one video on the built-in demo model (random weights: the video is noise).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
exec wanserve generate --prompt "a cat walks on the grass" --size 512*512 --num-frames 41 --steps 30 --output demo.mp4
