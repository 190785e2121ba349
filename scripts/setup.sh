#!/usr/bin/env bash
# Create .venv and install phasetune with its dev extras. torch 2.13.0 goes first: its CPU build is on local disk
# here, and installing it first keeps pip from pulling a multi-GB CUDA build to satisfy the torch range.
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
