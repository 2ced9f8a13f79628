"""Datasets by name, for the CLI and config files."""
from __future__ import annotations

import glob
import os

import numpy as np

from .datasets import Dataset, load_digits_dataset, stratified_split, synthetic_cifar
from .formats import load_cifar10_batches, load_mnist, load_npz

DATASETS = ("digits", "synthetic_cifar", "mnist", "cifar10", "npz")


def _need_path(name: str, data_path) -> str:
    if not data_path:
        raise ValueError(f"dataset {name!r} needs data_path (--data-path), got none")
    return os.fspath(data_path)


def _find(directory: str, stem: str) -> str:
    for candidate in (stem, stem + ".gz"):
        p = os.path.join(directory, candidate)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(f"{directory}: expected {stem} or {stem}.gz")


def _split(x, y, val_fraction, seed) -> Dataset:
    tr, va = stratified_split(y, val_fraction, seed)
    return Dataset(x[tr], y[tr], x[va], y[va], int(y.max()) + 1)


#: (input shape, classes) of the datasets known without reading them (files may hold fewer classes)
_SHAPES = {"digits": ((1, 8, 8), 10), "synthetic_cifar": ((3, 32, 32), 10)}


def peek_dataset(name: str, data_path=None):
    """(input_shape, num_classes) of dataset `name` when known without loading it, else None: lets
    the run check the model against checkpoints before spending the time to load the data."""
    return _SHAPES.get(name)


def load_dataset(name: str, data_path=None, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """digits (bundled); synthetic_cifar (generated, 5000 train / 1000 val); mnist (directory with
    the four IDX files, training set split for validation); cifar10 (directory with
    data_batch_*.bin, split for validation); npz (file with x and y, split for validation)."""
    if name == "digits":
        return load_digits_dataset(val_fraction, seed)
    if name == "synthetic_cifar":
        x, y = synthetic_cifar(5000, seed=seed)
        xv, yv = synthetic_cifar(1000, seed=seed + 1)
        return Dataset(x, y, xv, yv, 10)
    if name == "mnist":
        d = _need_path(name, data_path)
        x, y = load_mnist(_find(d, "train-images-idx3-ubyte"), _find(d, "train-labels-idx1-ubyte"))
        return _split(x, y, val_fraction, seed)
    if name == "cifar10":
        d = _need_path(name, data_path)
        files = sorted(glob.glob(os.path.join(d, "data_batch_*.bin")))
        if not files:
            raise FileNotFoundError(f"{d}: expected CIFAR-10 binary files data_batch_*.bin, found none")
        x, y = load_cifar10_batches(files)
        return _split(x, y, val_fraction, seed)
    if name == "npz":
        x, y = load_npz(_need_path(name, data_path))
        if x.ndim == 3:  # (N, H, W) grey images
            x = x[:, None]
        return _split(np.ascontiguousarray(x), y, val_fraction, seed)
    raise ValueError(f"dataset: expected one of {list(DATASETS)}, got {name!r}")
