#!/usr/bin/env bash
# Create .venv and install phasetune with its dev extras. torch 2.13.0 goes first: its CPU build is on local disk
# here, and installing it first keeps pip from pulling a multi-GB CUDA build to satisfy the torch range.
# The fashion_mnist workload's data come from Debian's dataset-fashion-mnist, installed here where apt-get can.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install --quiet "torch==2.13.0" || .venv/bin/pip install --quiet "torch>=2.2,<2.14" --index-url https://download.pytorch.org/whl/cpu
fi
.venv/bin/pip install --quiet -e ".[dev]"

FASHION=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FASHION" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$SUDO" ] || command -v sudo >/dev/null 2>&1; }; then
    $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
      || { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } \
      || true
  fi
  [ -f "$FASHION" ] || echo "phasetune: the fashion_mnist workload needs Debian's dataset-fashion-mnist" \
    "(apt-get install dataset-fashion-mnist, or PHASETUNE_FASHION_MNIST_DIR=<its files>); the others run without it" >&2
fi
