#!/usr/bin/env bash
# The main job end to end on a fresh machine: sets everything up, starts a real ComfyUI with this pack, runs the
# shipped CogVideoX preset on a sample photo and writes outputs and figures to demo_out/ (or --out DIR).
# Usage: bash scripts/demo.sh [--out DIR] [--steps N]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
