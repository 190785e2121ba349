#!/usr/bin/env bash
# Issue 23, on a GPU machine: tabulate a small schedule tree on the full fashion_mnist (60,000 training images
# drawn into train/val by each seed: 50,000 + 10,000) with bench/tree_table.py on CUDA, then print the pre-checks
# P1-P4 (and the simulated methods) with bench/tree_sim.py. One prepared script: the device tool runs it as is.
#
#   bash scripts/gpu_tree_fashion_mnist.sh            # OUT=/tmp by default; SEEDS=4 EPOCHS=12
#
# It needs a torch that sees a CUDA device in .venv (or PYTHON=<a python that has phasetune and a CUDA torch>) and
# Debian's dataset-fashion-mnist (or PHASETUNE_FASHION_MNIST_DIR). Cost: 6 trunks and 96 leaves per seed at the
# default grid, ~830 epochs of the CNN a seed; a seed's wall seconds are recorded in the table.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-/tmp}
SEEDS=${SEEDS:-4}
EPOCHS=${EPOCHS:-12}
PARAMS='{"n_train": 50000, "n_val": 10000}'
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print(torch.cuda.get_device_name(0))"
table="$OUT/fashion_mnist-tree.json.gz"
"$PYTHON" bench/tree_table.py --workload fashion_mnist --params "$PARAMS" --epochs "$EPOCHS" --seeds "$SEEDS" \
  --device cuda --out "$table"
"$PYTHON" bench/tree_sim.py --workload fashion_mnist --params "$PARAMS" --epochs "$EPOCHS" --seeds "$SEEDS" \
  --table "$table" --json "$OUT/fashion_mnist-tree-sim.json"
