"""Explicit padding of NCHW arrays in PyTorch's non-zero padding modes, and its gradient.

Conv2d(padding_mode='reflect'|'replicate'|'circular') pads its input with this (as PyTorch does)
and convolves without padding; the gradient of the padding folds each border row/column's gradient
back onto the input position it was copied from. Works on NumPy and CuPy arrays alike.

Modes (PyTorch's names; NumPy's in brackets): 'reflect' mirrors without repeating the edge
(d c b | a b c d | c b a) ['reflect'], 'replicate' repeats the edge (a a | a b c d | d d) ['edge'],
'circular' wraps around (c d | a b c d | a b) ['wrap'].
"""
from __future__ import annotations

import numpy as np

MODES = ("zeros", "reflect", "replicate", "circular")


def source_index(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """For each position of an axis of length n padded by (before, after): the input index it copies."""
    i = np.arange(-before, n + after)
    if mode == "reflect":
        i = np.abs(i)
        return np.where(i >= n, 2 * (n - 1) - i, i)
    if mode == "replicate":
        return np.clip(i, 0, n - 1)
    return np.mod(i, n)


def check(mode: str, h: int, w: int, pads, where: str) -> None:
    """PyTorch's limits: reflect needs each pad < the axis length, circular <= it."""
    top, bottom, left, right = pads
    for axis, n, a, b in (("height", h, top, bottom), ("width", w, left, right)):
        if mode == "reflect" and max(a, b) >= n:
            raise ValueError(f"{where}: padding_mode='reflect' needs padding < the input {axis} {n}, got padding "
                             f"({a}, {b})")
        if mode == "circular" and max(a, b) > n:
            raise ValueError(f"{where}: padding_mode='circular' needs padding <= the input {axis} {n}, got padding "
                             f"({a}, {b})")


def pad(x, pads, mode: str, xp):
    """x (N, C, H, W) padded by (top, bottom, left, right) in `mode`, as a new contiguous array."""
    top, bottom, left, right = pads
    n, c, h, w = x.shape
    rows = xp.asarray(source_index(h, top, bottom, mode))
    cols = xp.asarray(source_index(w, left, right, mode))
    return xp.ascontiguousarray(x.take(rows, axis=2).take(cols, axis=3))


def _fold_axis(g, n: int, before: int, axis: int, src: np.ndarray, xp):
    """The gradient of `take(src, axis)`: the interior's rows copied, each border row added onto its source."""
    index = [slice(None)] * 4
    index[axis] = slice(before, before + n)
    out = xp.array(g[tuple(index)])
    for j, i in enumerate(src):
        if before <= j < before + n:
            continue
        dst, piece = [slice(None)] * 4, [slice(None)] * 4
        dst[axis], piece[axis] = int(i), j
        out[tuple(dst)] += g[tuple(piece)]
    return out


def pad_grad(g, shape, pads, mode: str, xp):
    """The gradient with respect to x of pad(x, pads, mode), given the padded output's gradient g."""
    top, bottom, left, right = pads
    _, _, h, w = shape
    g = _fold_axis(g, w, left, 3, source_index(w, left, right, mode), xp)
    return xp.ascontiguousarray(_fold_axis(g, h, top, 2, source_index(h, top, bottom, mode), xp))
