"""In-memory datasets: scikit-learn's bundled digits (no download) and a seeded synthetic
CIFAR-shaped set for tests and benchmarks."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Dataset:
    """Train/validation arrays: x (N, C, H, W) float32, y (N,) int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])

    def limit(self, n: int | None) -> "Dataset":
        """The first n training examples (and at most n validation examples); for quick runs."""
        if n is None:
            return self
        if n < 1:
            raise ValueError(f"Dataset.limit(n): expected a positive integer, got {n}")
        return Dataset(self.x_train[:n], self.y_train[:n], self.x_val[:n], self.y_val[:n], self.num_classes)


def stratified_split(y: np.ndarray, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): each class contributes round(val_fraction * count) examples to val,
    so both splits keep the class proportions. Both index arrays are shuffled with `seed`."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"stratified_split(val_fraction): expected a value in [0, 1), got {val_fraction}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(val_fraction * idx.size))
        val.append(idx[:k])
        train.append(idx[k:])
    train_idx, val_idx = np.concatenate(train), np.concatenate(val)
    return rng.permutation(train_idx), rng.permutation(val_idx)


def load_digits_dataset(val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's digits (1797 8x8 grey images, 10 classes, shipped inside the wheel):
    x scaled from 0..16 to [0, 1], shape (N, 1, 8, 8) float32; stratified split."""
    from sklearn.datasets import load_digits  # lazy: sklearn import costs ~0.5 s

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    tr, va = stratified_split(y, val_fraction, seed)
    return Dataset(x[tr], y[tr], x[va], y[va], 10)


def synthetic_cifar(n: int, seed: int = 0, num_classes: int = 10, noise: float = 0.5,
                    image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, 3, S, S) float32 and labels (n,) int64 that a CNN can learn: each class has a
    fixed smooth pattern (a random mix of low-frequency sinusoids per channel, drawn from a
    generator keyed only by num_classes and image_size, so train and validation sets made with
    different seeds share the classes); every image is its class pattern, randomly shifted by up
    to 2 pixels (circularly) plus Gaussian noise of std `noise`. `seed` picks labels, shifts, noise."""
    if n < 0:
        raise ValueError(f"synthetic_cifar(n): expected n >= 0, got {n}")
    s = image_size
    proto_rng = np.random.default_rng([num_classes, s, 12345])
    coords = np.arange(s) * (2 * np.pi / s)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    protos = np.zeros((num_classes, 3, s, s))
    for c in range(num_classes):
        for ch in range(3):
            for _ in range(3):
                fy, fx = proto_rng.integers(0, 4, size=2)
                phase = proto_rng.uniform(0, 2 * np.pi)
                protos[c, ch] += proto_rng.normal() * np.cos(fy * yy + fx * xx + phase)
    protos /= protos.std(axis=(1, 2, 3), keepdims=True) + 1e-12
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=n).astype(np.int64)
    shifts = rng.integers(-2, 3, size=(n, 2))
    x = np.empty((n, 3, s, s), dtype=np.float32)
    for i in range(n):
        x[i] = np.roll(protos[y[i]], tuple(shifts[i]), axis=(1, 2))
    x += rng.normal(0.0, noise, size=x.shape).astype(np.float32)
    return x, y
