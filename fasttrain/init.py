"""Weight initialization. Each initializer is `f(shape, rng, dtype) -> array`; factories take the
hyperparameters. Glorot & Bengio 2010 (Xavier), He et al. 2015 (Kaiming), Saxe et al. 2014
(orthogonal). Fans follow the usual convention: (out, in) for matrices, (K, C, R, S) for convs."""
from __future__ import annotations

import math

import numpy as np


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of `shape`."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def xavier_uniform(gain: float = 1.0):
    def init(shape, rng, dtype):
        fi, fo = fans(shape)
        bound = gain * math.sqrt(6.0 / (fi + fo))
        return rng.uniform(-bound, bound, shape).astype(dtype)
    return init


def xavier_normal(gain: float = 1.0):
    def init(shape, rng, dtype):
        fi, fo = fans(shape)
        return (gain * math.sqrt(2.0 / (fi + fo)) * rng.standard_normal(shape)).astype(dtype)
    return init


def _he_gain(a: float) -> float:
    return math.sqrt(2.0 / (1.0 + a * a))


def he_normal(a: float = 0.0):
    """std = gain / sqrt(fan_in), gain = sqrt(2 / (1 + a^2)) (a: leaky ReLU slope)."""
    def init(shape, rng, dtype):
        fi, _ = fans(shape)
        return (_he_gain(a) / math.sqrt(fi) * rng.standard_normal(shape)).astype(dtype)
    return init


def he_uniform(a: float = 0.0):
    def init(shape, rng, dtype):
        fi, _ = fans(shape)
        bound = _he_gain(a) * math.sqrt(3.0 / fi)
        return rng.uniform(-bound, bound, shape).astype(dtype)
    return init


def small_normal(std: float = 0.01):
    """The lecture notes' first attempt: fine for shallow nets, vanishing activations in deep ones."""
    def init(shape, rng, dtype):
        return (std * rng.standard_normal(shape)).astype(dtype)
    return init


def constant(value: float):
    def init(shape, rng, dtype):
        return np.full(shape, value, dtype)
    return init


def zeros():
    return constant(0.0)


def ones():
    return constant(1.0)


def orthogonal(gain: float = 1.0):
    """Rows (or columns) orthonormal after flattening to (shape[0], rest); sign-corrected QR."""
    def init(shape, rng, dtype):
        rows = shape[0]
        cols = math.prod(shape[1:]) if len(shape) > 1 else 1
        a = rng.standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))  # makes the distribution uniform over orthogonal matrices
        if rows < cols:
            q = q.T
        return (gain * q[:rows, :cols]).reshape(shape).astype(dtype)
    return init


_BY_NAME = {"xavier_uniform": xavier_uniform, "glorot_uniform": xavier_uniform, "xavier_normal": xavier_normal,
            "glorot_normal": xavier_normal, "he_normal": he_normal, "kaiming_normal": he_normal,
            "he_uniform": he_uniform, "kaiming_uniform": he_uniform, "small_normal": small_normal,
            "zeros": zeros, "ones": ones, "orthogonal": orthogonal}


def get(init):
    """An initializer from a name (e.g. "he_normal") or a callable `f(shape, rng, dtype)`."""
    if callable(init):
        return init
    if isinstance(init, str) and init in _BY_NAME:
        return _BY_NAME[init]()
    raise ValueError(f"init: expected a callable or one of {sorted(_BY_NAME)}, got {init!r}")
