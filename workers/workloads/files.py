"""A user's own data under the data root: ``npz`` (arrays in one file) and ``image_folder`` (class subfolders).

Both are classification workloads (cross-entropy, accuracy) whose model is picked by the ``model`` param: ``mlp``
(one hidden layer over the flattened input) or ``cnn`` (the airbench-style CNN of ``models.cnn``), sized from the
data's shape and class count. ``path`` is relative to the data root; the registry resolves it there and refuses one
that leaves it. Inside an image folder, every subfolder is checked to stay in the folder before it is listed, and
every file before it is read (again at each read, on the Dataset path), so no symlink leads a study out of it.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from phasetune.search_spaces.errors import SpecError
from phasetune.workers.seeding import generator
from phasetune.workers.workloads.contract import Data, Param, TensorSplit, WorkloadSpec
from phasetune.workers.workloads.models import cnn, mlp, no_decay_on_biases_and_norms
from phasetune.workers.workloads.paths import inside

MODEL_PARAMS = {
    "model": Param("mlp", "mlp (one hidden layer over the flattened input) or cnn (3 conv blocks)",
                   choices=("mlp", "cnn")),
    "hidden": Param(128, "mlp: width of the hidden layer", low=1, high=65_536),
    "width": Param(16, "cnn: channels of the first block (then 2x, 4x)", low=1, high=128),
    "batch_size": Param(64, "examples per step", low=1),
}


def _model(params: Mapping[str, Any], data: Data) -> nn.Module:
    shape, classes = data.extra["input_shape"], data.extra["n_classes"]
    if params["model"] == "cnn":
        return cnn(shape[0], classes, params["width"])
    return nn.Sequential(nn.Flatten(), mlp([math.prod(shape), params["hidden"], classes]))


def _groups(model: nn.Module, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    return no_decay_on_biases_and_norms(model)


# ---- npz -------------------------------------------------------------------------------------------------------

NPZ_ARRAYS = ("x_train", "y_train", "x_val", "y_val")


def _npz_headers(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each array's shape and dtype, read from the .npy headers inside the archive (no array is loaded)."""
    out = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            with archive.open(name) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            out[name.removesuffix(".npy")] = (tuple(shape), dtype)
    return out


def _validate_npz(params: Mapping[str, Any]) -> None:
    try:
        headers = _npz_headers(params["path"])
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise SpecError(("path",), f"is not a readable .npz archive: {err}") from None
    missing = [name for name in NPZ_ARRAYS if name not in headers]
    if missing:
        raise SpecError(("path",), f"the archive lacks the arrays {missing} (it needs {list(NPZ_ARRAYS)})")
    (x_train, x_dtype), (y_train, y_dtype), (x_val, xv_dtype), (y_val, yv_dtype) = (headers[n] for n in NPZ_ARRAYS)
    shapes_ok = (len(x_train) >= 2 and len(y_train) == 1 and len(y_val) == 1 and x_train[0] == y_train[0] >= 1
                 and x_val[0] == y_val[0] >= 1 and x_train[1:] == x_val[1:])
    if not shapes_ok:
        raise SpecError(("path",), f"needs x_train/x_val of one shape per example and 1-d y_train/y_val with one "
                                   f"label per example, none empty; got x_train {x_train}, y_train {y_train}, "
                                   f"x_val {x_val}, y_val {y_val}")
    if not all(np.issubdtype(d, np.number) and not np.issubdtype(d, np.complexfloating) for d in (x_dtype, xv_dtype)):
        raise SpecError(("path",), f"x_train and x_val must be real numbers, got {x_dtype} and {xv_dtype}")
    if not (np.issubdtype(y_dtype, np.integer) and np.issubdtype(yv_dtype, np.integer)):
        raise SpecError(("path",), f"labels must be integer class indices, got {y_dtype} and {yv_dtype}")
    with np.load(params["path"]) as arrays:  # the labels are small: their values are checked too
        if min(int(arrays["y_train"].min()), int(arrays["y_val"].min())) < 0:
            raise SpecError(("path",), "labels must be class indices >= 0")
    if params["model"] == "cnn" and len(x_train) not in (3, 4):
        raise SpecError(("model",), f"cnn needs images (N, H, W) or (N, C, H, W), got x_train {x_train}")


def _npz_size(params: Mapping[str, Any]) -> int:
    return _npz_headers(params["path"])["x_train"][0][0]


def _as_inputs(x: np.ndarray, images: bool) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    return t.unsqueeze(1) if images and t.dim() == 3 else t  # (N, H, W) -> (N, 1, H, W)


def _npz_data(params: Mapping[str, Any], seed: int) -> Data:
    with np.load(params["path"]) as arrays:
        images = params["model"] == "cnn"
        x_train, x_val = _as_inputs(arrays["x_train"], images), _as_inputs(arrays["x_val"], images)
        y_train = torch.as_tensor(arrays["y_train"], dtype=torch.long)
        y_val = torch.as_tensor(arrays["y_val"], dtype=torch.long)
    mean, std = x_train.mean(), x_train.std().clamp_min(1e-8)  # scaled with the training split's statistics
    classes = int(max(y_train.max(), y_val.max())) + 1
    return Data(train=TensorSplit((x_train - mean) / std, y_train), val=TensorSplit((x_val - mean) / std, y_val),
                extra={"input_shape": tuple(x_train.shape[1:]), "n_classes": classes})


NPZ = WorkloadSpec(
    name="npz",
    params={"path": Param(kind="path", required=True,
                          help="an .npz file under the data root with x_train, y_train, x_val, y_val"),
            **MODEL_PARAMS},
    data=_npz_data, model=_model, train_size=_npz_size, validate=_validate_npz, param_groups=_groups,
    description="your arrays: x_train, y_train, x_val, y_val in one .npz file under the data root (classification)",
)


# ---- image_folder ------------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


OUTSIDE = "a subfolder or file of the folder resolves outside it (a symlink out?)"


def _images(directory: Path, folder: Path) -> list[tuple[Path, str]]:
    """(file, class) for every image in the class subfolders of ``directory`` (``folder`` or its ``train/`` or
    ``val/``); SpecError if anything resolves outside ``folder``, checked before it is listed or read (and the
    error names nothing found outside)."""
    if not inside(directory, folder):
        raise SpecError(("path",), OUTSIDE)
    found = []
    for class_dir in sorted(directory.iterdir()):
        if not inside(class_dir, folder):
            raise SpecError(("path",), OUTSIDE)
        if not class_dir.is_dir():
            continue
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                if not inside(file, folder):
                    raise SpecError(("path",), OUTSIDE)
                if file.is_file():
                    found.append((file.resolve(), class_dir.name))
    return found


def _layout(params: Mapping[str, Any]) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]] | None]:
    """The folder's train and val images: its ``train/`` and ``val/`` subfolders (both), or (val None) all of it."""
    folder = Path(params["path"])
    if (folder / "train").is_dir() and (folder / "val").is_dir():
        return _images(folder / "train", folder), _images(folder / "val", folder)
    return _images(folder, folder), None


def _split(params: Mapping[str, Any], seed: int) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    train, val = _layout(params)
    if val is None:  # one folder: the study's seed draws the validation share
        order = torch.randperm(len(train), generator=generator(seed, "split")).tolist()
        n_val = round(len(train) * params["val_fraction"])
        train, val = [train[i] for i in order[n_val:]], [train[i] for i in order[:n_val]]
    return train, val


def _validate_folder(params: Mapping[str, Any]) -> None:
    folder = Path(params["path"])
    if not folder.is_dir():
        raise SpecError(("path",), "must name a directory of class subfolders")
    train, val = _layout(params)
    n_val = round(len(train) * params["val_fraction"]) if val is None else len(val)
    if len(train) - (n_val if val is None else 0) < 1 or n_val < 1:
        raise SpecError(("path",), f"needs images in class subfolders for both training and validation "
                                   f"(found {len(train)} and {n_val})")
    classes = {c for _, c in train} | {c for _, c in val or []}
    if len(classes) < 2:
        raise SpecError(("path",), f"needs at least two class subfolders, found {sorted(classes)}")


def _folder_size(params: Mapping[str, Any]) -> int:
    train, val = _layout(params)
    return len(train) - round(len(train) * params["val_fraction"]) if val is None else len(train)


class ImageFiles(Dataset):
    """Images decoded from their files on each read (the Dataset path: the data need not fit in memory)."""

    def __init__(self, items: list[tuple[Path, int]], size: int, grayscale: bool, folder: Path) -> None:
        self.items, self.size, self.mode, self.folder = items, size, "L" if grayscale else "RGB", folder

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        path, label = self.items[i]
        if not inside(path, self.folder):  # replaced by a symlink out since it was listed
            raise PermissionError(f"image {i} of the folder now resolves outside it")
        with Image.open(path) as image:
            pixels = np.asarray(image.convert(self.mode).resize((self.size, self.size)), dtype=np.float32)
        x = torch.from_numpy(pixels).reshape(self.size, self.size, -1).permute(2, 0, 1)
        return (x / 255.0 - 0.5) / 0.25, torch.tensor(label)


def _folder_data(params: Mapping[str, Any], seed: int) -> Data:
    train, val = _split(params, seed)
    classes = sorted({c for _, c in train} | {c for _, c in val})
    index = {c: i for i, c in enumerate(classes)}

    def dataset(items: list[tuple[Path, str]]) -> Dataset:
        return ImageFiles([(p, index[c]) for p, c in items], params["image_size"], params["grayscale"],
                          Path(params["path"]))

    splits = [dataset(train), dataset(val)]
    if params["in_memory"]:  # decoded once, then the tensor path
        splits = [TensorSplit(torch.stack([s[i][0] for i in range(len(s))]),
                              torch.stack([s[i][1] for i in range(len(s))])) for s in splits]
    channels = 1 if params["grayscale"] else 3
    return Data(train=splits[0], val=splits[1],
                extra={"input_shape": (channels, params["image_size"], params["image_size"]),
                       "n_classes": len(classes), "classes": classes})


IMAGE_FOLDER = WorkloadSpec(
    name="image_folder",
    params={
        "path": Param(kind="path", required=True,
                      help="a directory under the data root: class subfolders of PNG/JPEG images, or train/ and val/ "
                           "each holding them"),
        "val_fraction": Param(0.2, "without train/ and val/: the share held out for validation, by the study's seed",
                              low=0.0, high=1.0),
        "image_size": Param(32, "images are resized to this square size", low=4, high=512),
        "grayscale": Param(False, "read images as one channel instead of RGB"),
        "in_memory": Param(True, "decode every image once into tensors (fast); false: read files through a "
                                 "DataLoader each epoch (data larger than memory)"),
        **{**MODEL_PARAMS, "model": Param("cnn", "cnn (3 conv blocks) or mlp (one hidden layer)",
                                          choices=("cnn", "mlp"))},
    },
    data=_folder_data, model=_model, train_size=_folder_size, validate=_validate_folder, param_groups=_groups,
    description="your images: class subfolders of PNG/JPEG files under the data root (classification)",
)
