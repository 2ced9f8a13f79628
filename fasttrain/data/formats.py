"""Loaders for standard dataset files; each raises a ValueError naming the file and what was
wrong when a file is malformed, and FileNotFoundError when it is missing.

- MNIST IDX (http://yann.lecun.com/exdb/mnist/): 2 zero bytes, a type byte, a dimension-count
  byte, one big-endian uint32 per dimension, then the values big-endian. Raw or gzip'ed.
- CIFAR-10 binary (https://www.cs.toronto.edu/~kriz/cifar.html): records of 1 label byte then
  3072 pixel bytes (1024 red, 1024 green, 1024 blue, each 32x32 row-major).
- .npz with arrays `x` (N, ...) and `y` (N,); uint8 x (pixels) is scaled to [0, 1].
- Image folders (PNG/JPEG, one subfolder per class): fasttrain.data.images.
"""
from __future__ import annotations

import gzip
import os
import zipfile
import zlib

import numpy as np

from .validate import DataError

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CIFAR_RECORD = 1 + 3 * 32 * 32


def _read_bytes(path) -> bytes:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: looks gzip-compressed but cannot be decompressed ({exc})") from None
    return raw


def load_mnist_idx(path) -> np.ndarray:
    """The array stored in an IDX file (raw or .gz), in its native dtype (uint8 for MNIST)."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (expected 2 zero bytes then type and ndim, got {raw[:4]!r})")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02x}, expected one of "
                         f"{[hex(k) for k in _IDX_TYPES]}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, expected at least {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[type_code])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} of {dtype} ({expected} bytes with header), "
                         f"file has {len(raw)} bytes")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def load_mnist(images_path, labels_path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-style image and label IDX files -> x (N, 1, H, W) float32 in [0, 1], y (N,) int64."""
    images, labels = load_mnist_idx(images_path), load_mnist_idx(labels_path)
    if images.ndim != 3:
        raise ValueError(f"{images_path}: expected images (N, H, W), got shape {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{labels_path}: expected ({images.shape[0]},) labels to match the images, "
                         f"got shape {labels.shape}")
    x = images.astype(np.float32)[:, None] / 255.0
    return x, labels.astype(np.int64)


def load_cifar10_batches(paths) -> tuple[np.ndarray, np.ndarray]:
    """One or more CIFAR-10 binary batch files -> x (N, 3, 32, 32) float32 in [0, 1], y (N,) int64."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    xs, ys = [], []
    for path in paths:
        raw = _read_bytes(path)
        if len(raw) == 0 or len(raw) % _CIFAR_RECORD:
            raise ValueError(f"{path}: CIFAR-10 binary size must be a positive multiple of {_CIFAR_RECORD} "
                             f"bytes (1 label + 3072 pixels), got {len(raw)}")
        records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
        labels = records[:, 0]
        if labels.max() > 9:
            raise ValueError(f"{path}: CIFAR-10 labels must be 0..9, found {int(labels.max())}")
        ys.append(labels.astype(np.int64))
        xs.append(records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    if not xs:
        raise ValueError("load_cifar10_batches(paths): expected at least one file, got none")
    return np.concatenate(xs), np.concatenate(ys)


def load_npz(path) -> tuple[np.ndarray, np.ndarray]:
    """x, y from an .npz archive with keys `x` (N, ...) and `y` (N,) integer labels."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise DataError(f"{path}: expected an .npz archive with keys x and y, got a single array (.npy); "
                        "write both with numpy.savez(path, x=x, y=y)")
    if not magic.startswith(b"PK"):
        raise DataError(f"{path}: not an .npz archive (it starts with bytes {magic.hex()}, not a zip header); "
                        "expected a file written by numpy.savez(path, x=x, y=y)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise DataError(f"{path}: missing keys {missing}; expected x and y, found {archive.files}")
            x, y = archive["x"], archive["y"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: a damaged .npz archive ({type(exc).__name__}: {exc}); expected a complete "
                        "file written by numpy.savez (truncated by a copy?)") from None
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{path}: expected y of shape ({x.shape[0]},) to match x {x.shape}, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: expected integer labels y, got dtype {y.dtype}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255), y.astype(np.int64)
    return x.astype(np.float32, copy=False), y.astype(np.int64)
