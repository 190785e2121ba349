"""A user's own data under the data root: ``npz`` (arrays in one file) and ``image_folder`` (class subfolders).

Both are classification workloads (cross-entropy, accuracy) whose model is picked by the ``model`` param: ``mlp``
(one hidden layer over the flattened input) or ``cnn`` (the airbench-style CNN of ``models.cnn``), sized from the
data's shape and class count. ``path`` is relative to the data root; the registry resolves it there and refuses one
that leaves it, and the image folder's files are checked the same way before any is opened.
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

from search_spaces.errors import SpecError
from workers.seeding import generator
from workers.workloads.contract import Data, Param, TensorSplit, WorkloadSpec
from workers.workloads.models import cnn, mlp, no_decay_on_biases_and_norms

MODEL_PARAMS = {
    "model": Param("mlp", "mlp (one hidden layer over the flattened input) or cnn (3 conv blocks)",
                   choices=("mlp", "cnn")),
    "hidden": Param(128, "mlp: width of the hidden layer", low=1),
    "width": Param(16, "cnn: channels of the first block (then 2x, 4x)", low=1),
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
    (x_train, _), (y_train, y_dtype), (x_val, _), (y_val, _) = (headers[name] for name in NPZ_ARRAYS)
    if len(x_train) < 2 or x_train[0] != y_train[0] or x_val[0] != y_val[0] or x_train[1:] != x_val[1:]:
        raise SpecError(("path",), f"needs x_* of one shape per example and one label per example; got x_train "
                                   f"{x_train}, y_train {y_train}, x_val {x_val}, y_val {y_val}")
    if not np.issubdtype(y_dtype, np.integer):
        raise SpecError(("path",), f"labels must be integer class indices, got {y_dtype}")
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


def _images(folder: Path, root: Path) -> list[tuple[Path, str]]:
    """(file, class) for every image in the class subfolders of ``folder``; SpecError if a subfolder or file
    resolves outside ``root`` (checked before it is listed or read)."""
    found = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if not class_dir.resolve().is_relative_to(root):
            raise SpecError(("path",), f"{class_dir.relative_to(root)} resolves outside the folder")
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                if not file.resolve().is_relative_to(root):
                    raise SpecError(("path",), f"{file.relative_to(root)} resolves outside the folder")
                found.append((file.resolve(), class_dir.name))
    return found


def _layout(params: Mapping[str, Any]) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]] | None]:
    """The folder's train and val images: its ``train/`` and ``val/`` subfolders, or (val None) all of it."""
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

    def __init__(self, items: list[tuple[Path, int]], size: int, grayscale: bool) -> None:
        self.items, self.size, self.mode = items, size, "L" if grayscale else "RGB"

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        path, label = self.items[i]
        with Image.open(path) as image:
            pixels = np.asarray(image.convert(self.mode).resize((self.size, self.size)), dtype=np.float32)
        x = torch.from_numpy(pixels).reshape(self.size, self.size, -1).permute(2, 0, 1)
        return (x / 255.0 - 0.5) / 0.25, torch.tensor(label)


def _folder_data(params: Mapping[str, Any], seed: int) -> Data:
    train, val = _split(params, seed)
    classes = sorted({c for _, c in train} | {c for _, c in val})
    index = {c: i for i, c in enumerate(classes)}

    def dataset(items: list[tuple[Path, str]]) -> Dataset:
        return ImageFiles([(p, index[c]) for p, c in items], params["image_size"], params["grayscale"])

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
        "image_size": Param(32, "images are resized to this square size", low=4),
        "grayscale": Param(False, "read images as one channel instead of RGB"),
        "in_memory": Param(True, "decode every image once into tensors (fast); false: read files through a "
                                 "DataLoader each epoch (data larger than memory)"),
        **{**MODEL_PARAMS, "model": Param("cnn", "cnn (3 conv blocks) or mlp (one hidden layer)",
                                          choices=("cnn", "mlp"))},
    },
    data=_folder_data, model=_model, train_size=_folder_size, validate=_validate_folder, param_groups=_groups,
    description="your images: class subfolders of PNG/JPEG files under the data root (classification)",
)
