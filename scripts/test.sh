#!/usr/bin/env bash
# Sets everything up on a fresh machine (venv, torch, deps, ComfyUI 0.3.75, Chromium) and runs the whole suite:
# library tests, real-ComfyUI server tests over HTTP/websocket, and headless-Chromium frontend tests.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser
export ANTI_I2V_COMFYUI="$PWD/.cache/comfyui"
export ANTI_I2V_REQUIRE_ALL=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout=900 -rfEs "$@"
