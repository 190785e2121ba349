"""Fashion-MNIST (Xiao et al. 2017: 60,000 training and 10,000 test 28x28 grayscale images, 10 classes, MIT
licence) with a small CNN in the airbench style: the data resident on the device as tensors, channels_last and
bfloat16 autocast on CUDA.

The IDX files come from Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``, or
``$PHASETUNE_FASHION_MNIST_DIR``), which ``scripts/setup.sh`` and the Docker images install; they are read with numpy.
Training and validation examples are disjoint draws (by the study's seed) from the 60,000 training images; the
10,000 test images are evaluated once, when a trial ends (``test_accuracy``), never for the objective.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from phasetune.search_spaces.errors import SpecError
from phasetune.workers.seeding import generator
from phasetune.workers.workloads.contract import Data, Param, TensorSplit, WorkloadSpec
from phasetune.workers.workloads.models import cnn, no_decay_on_biases_and_norms

PACKAGE = "dataset-fashion-mnist"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}
N_TRAIN_IMAGES, N_TEST_IMAGES = 60_000, 10_000
MEAN, STD = 0.2860, 0.3530  # of the training images' pixels in [0, 1]

PARAMS = {
    "n_train": Param(10_000, "training images, drawn from the 60,000 by the study's seed", low=1, high=N_TRAIN_IMAGES),
    "n_val": Param(5_000, "validation images, drawn from the rest of the 60,000", low=1, high=N_TRAIN_IMAGES),
    "n_test": Param(N_TEST_IMAGES, "test images (the first n of the 10,000), evaluated once per trial",
                    low=1, high=N_TEST_IMAGES),
    "width": Param(8, "channels of the CNN's first block (then 2x and 4x)", low=1, high=128),
    "batch_size": Param(128, "examples per step", low=1),
}


def data_dir() -> Path:
    return Path(os.environ.get("PHASETUNE_FASHION_MNIST_DIR") or DEFAULT_DIR)


def unavailable() -> str | None:
    missing = [name for name in FILES.values() if not (data_dir() / name).is_file()]
    if not missing:
        return None
    return (f"its data files are missing from {data_dir()} ({', '.join(missing)}): install the Debian package "
            f"{PACKAGE} (apt-get install {PACKAGE}), or set PHASETUNE_FASHION_MNIST_DIR to a copy of its files")


def validate(params: Mapping[str, Any]) -> None:
    if params["n_train"] + params["n_val"] > N_TRAIN_IMAGES:
        raise SpecError(("n_val",), f"n_train + n_val must be <= {N_TRAIN_IMAGES} (disjoint draws), got "
                                    f"{params['n_train']} + {params['n_val']}")


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST format: a magic number giving dtype and rank, the dimensions, then the data)."""
    with gzip.open(path) as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    rank = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape)


@cache
def _arrays() -> dict[str, np.ndarray]:
    """The four arrays, read once per process (35 MB: every trial in a worker process shares them)."""
    return {key: read_idx(data_dir() / name) for key, name in FILES.items()}


def _images(x: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(x.astype(np.float32)) / 255.0 - MEAN) / STD).unsqueeze(1)  # (N, 1, 28, 28)


def data(params: Mapping[str, Any], seed: int) -> Data:
    arrays = _arrays()
    order = torch.randperm(N_TRAIN_IMAGES, generator=generator(seed, "split")).numpy()
    train_idx, val_idx = order[:params["n_train"]], order[params["n_train"]:params["n_train"] + params["n_val"]]

    def split(x: np.ndarray, y: np.ndarray, index: np.ndarray) -> TensorSplit:
        return TensorSplit(_images(x[index]), torch.from_numpy(y[index].astype(np.int64)))

    test = np.arange(params["n_test"])
    return Data(train=split(arrays["train_x"], arrays["train_y"], train_idx),
                val=split(arrays["train_x"], arrays["train_y"], val_idx),
                test=split(arrays["test_x"], arrays["test_y"], test))


def model(params: Mapping[str, Any], data: Data) -> nn.Module:
    return cnn(1, 10, params["width"])


SPEC = WorkloadSpec(
    name="fashion_mnist", params=PARAMS, data=data, model=model, train_size=lambda params: params["n_train"],
    validate=validate, has_test=True, channels_last=True, autocast=True, unavailable=unavailable,
    param_groups=lambda m, params: no_decay_on_biases_and_norms(m),
    description="Fashion-MNIST 28x28 clothing images (Debian's dataset-fashion-mnist), an airbench-style CNN; "
                "test_accuracy on the 10,000 test images once per trial",
)
