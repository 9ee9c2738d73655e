#!/usr/bin/env bash
# `make gpu`: the whole product on a machine with an NVIDIA GPU and Python 3.11+ (nothing else): a virtualenv that
# sees the machine's own packages (its CUDA torch, where it has one: the project's pin keeps it), the project and
# Unsloth in it, then `make dev`'s launcher with the GPU worker in slots: PostgreSQL and Redis started from wheels
# where none answers (data under var/), the web server, a training worker with warm processes (on by default where
# the worker sees a GPU) and GPU_SLOTS slots (default 2), a cpu worker, and the demo run on the GPU.
#   make gpu                                  # or: GPU_SLOTS=4 make gpu DEV_ARGS="--host 0.0.0.0 --no-demo-run"
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GPU_VENV:-.venv-gpu}
if [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
  python3 -m venv --system-site-packages "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # Without a torch of its own the machine gets PyPI's Linux torch, which is the CUDA build.
  "$VENV/bin/pip" install -q -e .
  # As the Makefile does: Unsloth's own requirements would replace torch (torchvision, xformers pins).
  "$VENV/bin/pip" install -q --no-deps "unsloth==2026.10.9" "unsloth-zoo==2026.10.9"
  # The GGUF export: llama.cpp's library (built as the Makefile does) and its converters.
  CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" \
    "$VENV/bin/pip" install -q --no-deps "llama-cpp-python==0.3.36" "diskcache>=5.6.1"
  "$VENV/bin/python" scripts/family_assets.py "$VENV/share/llama-cpp-python"
  touch "$VENV/.installed"
fi
"$VENV/bin/python" -c "import torch, sys; ok = torch.cuda.is_available(); print('GPU:', torch.cuda.get_device_name(0) if ok else 'none visible to torch ' + torch.__version__); sys.exit(0 if ok else 1)" \
  || { echo "torch sees no CUDA GPU here: \`make dev\` runs the product on the CPU" >&2; exit 1; }
# Slots on one GPU run best under CUDA's Multi-Process Service (README, Deployment notes): started if it is here.
if command -v nvidia-cuda-mps-control >/dev/null 2>&1 && [ "${GPU_SLOTS:-2}" -gt 1 ] && ! pgrep -x nvidia-cuda-mps >/dev/null; then
  nvidia-cuda-mps-control -d && echo "started CUDA MPS for the slots (stop it: echo quit | nvidia-cuda-mps-control)"
fi
exec "$VENV/bin/python" -m dashboard.dev --gpu-slots "${GPU_SLOTS:-2}" "$@"
