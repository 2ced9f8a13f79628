"""Shape layers."""
from __future__ import annotations

from .module import Module


class Flatten(Module):
    """(N, ...) -> (N, prod(...))."""

    def forward(self, x):
        if getattr(x, "ndim", 0) < 1:
            raise ValueError(f"Flatten: expected input (N, ...), got {getattr(x, 'shape', type(x).__name__)}")
        self.cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError("Flatten.backward: backward called before forward")
        return dy.reshape(self.cache)
