"""Argument and input checks shared by the layers."""
from __future__ import annotations

import numpy as np

from .. import backend

FLOATS = (np.float32, np.float64)


def array_module(x):
    """numpy for host arrays, cupy for device arrays (imported only then)."""
    if backend._is_gpu(x):
        import cupy

        return cupy
    return np


def pair(name, v, where, minimum):
    """An int or a pair of ints, each >= minimum, as a pair."""
    p = (v, v) if isinstance(v, (int, np.integer)) else tuple(v) if isinstance(v, (tuple, list)) else None
    if p is None or len(p) != 2 or not all(isinstance(k, (int, np.integer)) and k >= minimum for k in p):
        raise ValueError(f"{where}: {name} must be an int >= {minimum} or a pair of them, got {v!r}")
    return int(p[0]), int(p[1])


def check_input(where: str, x, expected: str, ndim: int, dims: dict | None = None):
    """x has `ndim` dims, a float dtype and the given sizes at the given axes; returns it contiguous."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != ndim or any(shape[a] != v for a, v in (dims or {}).items()):
        raise ValueError(f"{where}: expected input {expected}, got {shape if shape is not None else type(x).__name__}")
    if x.dtype not in FLOATS:
        raise TypeError(f"{where}: expected a float32 or float64 input, got {x.dtype}")
    return array_module(x).ascontiguousarray(x)


def check_params(where: str, module, x) -> None:
    """The module's parameters are bound to an arena of x's dtype: an unbound parameter (None) or a
    dtype mismatch would otherwise reach a compiled kernel and fail there with a dump of its
    accepted signatures instead of saying what to do."""
    for p in module._params.values():
        if p.data is None:
            raise RuntimeError(f"{where}: parameters are not bound to a ParamArena; "
                               "call ft.ParamArena.for_model(model) before forward")
        if p.data.dtype != x.dtype:
            raise TypeError(f"{where}: input dtype {x.dtype} differs from the parameters' {p.data.dtype}; "
                            f"bind the arena with dtype={x.dtype} or pass {p.data.dtype} input")


def params_match(module, dtype) -> bool:
    """Whether every parameter is bound and of `dtype`: the per-step test, with check_params's
    messages formed only when it fails."""
    for p in module._params.values():
        if p.data is None or p.data.dtype != dtype:
            return False
    return True


def check_grad(where: str, cache, dy, shape, dtype):
    if cache is None:
        raise RuntimeError(f"{where}: backward called before forward")
    if tuple(dy.shape) != tuple(shape):
        raise ValueError(f"{where}: expected dy of shape {tuple(shape)} (the forward output), got {tuple(dy.shape)}")
    return array_module(dy).ascontiguousarray(dy, dtype=dtype)
