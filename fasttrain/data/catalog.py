"""Datasets by name, for the CLI and config files. Data read from files is checked before any
training (fasttrain.data.validate): one DataError naming the file for what would break a run."""
from __future__ import annotations

import glob
import os

from .datasets import Dataset, load_digits_dataset, stratified_split, synthetic_cifar
from .formats import load_cifar10_batches, load_mnist, load_npz
from .validate import check_arrays, to_nchw

DATASETS = ("digits", "synthetic_cifar", "mnist", "cifar10", "npz", "image_folder")


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


def _split(x, y, val_fraction, seed, source, num_classes=None) -> Dataset:
    num_classes = check_arrays(x, y, source, num_classes)
    tr, va = stratified_split(y, val_fraction, seed)
    return Dataset(x[tr], y[tr], x[va], y[va], num_classes)


#: (input shape, classes) of the datasets known without reading them (files may hold fewer classes)
_SHAPES = {"digits": ((1, 8, 8), 10), "synthetic_cifar": ((3, 32, 32), 10)}


def peek_dataset(name: str, data_path=None):
    """(input_shape, num_classes) of dataset `name` when known without loading it, else None: lets
    the run check the model against checkpoints before spending the time to load the data."""
    return _SHAPES.get(name)


def load_dataset(name: str, data_path=None, val_fraction: float = 0.2, seed: int = 0,
                 image_size: int | None = None) -> Dataset:
    """digits (bundled); synthetic_cifar (generated, 5000 train / 1000 val); mnist (directory with
    the training IDX files); cifar10 (directory with data_batch_*.bin); npz (file with x and y,
    NCHW, NHWC or (N, H, W): fasttrain.data.validate's rule); image_folder (directory with one
    subfolder of PNG/JPEG images per class, resized to image_size if given). Files are split
    for validation (stratified by class) after the checks of fasttrain.data.validate."""
    if image_size is not None and name != "image_folder":
        raise ValueError(f"image_size={image_size}: resizing applies to dataset 'image_folder' only, got dataset "
                         f"{name!r}; expected no image_size (--image-size)")
    if name == "digits":
        return load_digits_dataset(val_fraction, seed)
    if name == "synthetic_cifar":
        x, y = synthetic_cifar(5000, seed=seed)
        xv, yv = synthetic_cifar(1000, seed=seed + 1)
        return Dataset(x, y, xv, yv, 10)
    if name == "mnist":
        d = _need_path(name, data_path)
        x, y = load_mnist(_find(d, "train-images-idx3-ubyte"), _find(d, "train-labels-idx1-ubyte"))
        return _split(x, y, val_fraction, seed, d)
    if name == "cifar10":
        d = _need_path(name, data_path)
        files = sorted(glob.glob(os.path.join(d, "data_batch_*.bin")))
        if not files:
            raise FileNotFoundError(f"{d}: expected CIFAR-10 binary files data_batch_*.bin, found none")
        x, y = load_cifar10_batches(files)
        return _split(x, y, val_fraction, seed, d, num_classes=10)
    if name == "npz":
        path = _need_path(name, data_path)
        x, y = load_npz(path)
        return _split(to_nchw(x, path), y, val_fraction, seed, path)
    if name == "image_folder":
        from .images import load_image_folder

        d = _need_path(name, data_path)
        x, y, _ = load_image_folder(d, image_size)
        return _split(x, y, val_fraction, seed, d)
    raise ValueError(f"dataset: expected one of {list(DATASETS)}, got {name!r}")
