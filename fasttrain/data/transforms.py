"""Preprocessing: per-channel mean/std normalization fitted on training data only (statistics
from validation or test data would leak into training; cs231n "Data preprocessing")."""
from __future__ import annotations

import numpy as np


class Normalizer:
    """x -> (x - mean[c]) / std[c] per channel of NCHW (or NC) data."""

    def __init__(self, eps: float = 1e-8):
        self.eps = eps
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def fit(self, x: np.ndarray) -> "Normalizer":
        x = np.asarray(x)
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"Normalizer.fit(x): expected (N, C, ...) with N > 0, got shape {x.shape}")
        axes = (0,) + tuple(range(2, x.ndim))
        self.mean = x.mean(axis=axes, dtype=np.float64)
        self.std = x.std(axis=axes, dtype=np.float64)
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.mean is None:
            raise RuntimeError("Normalizer: call fit(x_train) before transforming")
        x = np.asarray(x)
        if x.ndim < 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"Normalizer: expected (N, {self.mean.shape[0]}, ...), got shape {x.shape}")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        out = (x - self.mean.reshape(shape)) / (self.std.reshape(shape) + self.eps)
        return out.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32)

    transform = __call__

    def state_dict(self) -> dict:
        return {"mean": np.asarray(self.mean), "std": np.asarray(self.std)}
