"""Data the tests write into a temporary data root: an .npz file and an image folder, both easy to learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_npz(root: Path, name: str = "blobs.npz", n_train: int = 240, n_val: int = 60, seed: int = 0) -> Path:
    """Three Gaussian blobs in 8 dimensions as x_train, y_train, x_val, y_val (integer labels)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 8)) * 3

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, size=n)
        return (centres[y] + rng.normal(size=(n, 8))).astype(np.float32), y.astype(np.int64)

    (x_train, y_train), (x_val, y_val) = draw(n_train), draw(n_val)
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    return path


def make_image_folder(root: Path, name: str = "shapes", per_class: int = 24, size: int = 12, split: bool = False,
                      seed: int = 0) -> Path:
    """Class subfolders of small PNGs (a bright square top-left, bottom-right or centre, with noise); with
    ``split``, under ``train/`` and ``val/``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / name
    corners = {"topleft": (0, 0), "bottomright": (size // 2, size // 2), "centre": (size // 4, size // 4)}
    for part, count in ((("train", per_class), ("val", per_class // 3)) if split else (("", per_class),)):
        for label, (r, c) in corners.items():
            directory = folder / part / label
            directory.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 60, size=(size, size, 3))
                pixels[r:r + size // 2, c:c + size // 2] += 180
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(directory / f"{i}.png")
    return folder
