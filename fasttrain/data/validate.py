"""Checks on a dataset read from files, run before any training: each problem is one DataError
(a ValueError) whose message names the file, what was found and what was expected, on one line,
so `fasttrain train` can print it as its error.

Layout rule for 4-d image arrays: NCHW unless the last axis is 1, 3 or 4 (grey, RGB, RGBA) and
axis 1 is not, in which case the array is NHWC and is transposed. An array where both axes could
be channels (e.g. 3x3x3 images) is read as NCHW.
"""
from __future__ import annotations

import numpy as np

CHANNEL_COUNTS = (1, 3, 4)


class DataError(ValueError):
    """A dataset file holds something training cannot use; the message is one line."""


def to_nchw(x: np.ndarray, source: str) -> np.ndarray:
    """x as (N, C, H, W), contiguous: (N, H, W) grey images get a channel axis, NHWC is transposed
    (the rule in the module docstring)."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[3] in CHANNEL_COUNTS and x.shape[1] not in CHANNEL_COUNTS:
            x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{source}: x has shape {x.shape}; expected images (N, C, H, W), (N, H, W, C) "
                        "with C in 1, 3, 4, or grey (N, H, W)")
    return np.ascontiguousarray(x)


def check_arrays(x: np.ndarray, y: np.ndarray, source: str, num_classes: int | None = None) -> int:
    """Raise a DataError for what would break or mislead training: no examples, x not (N, C, H, W),
    y not one integer label per example, NaN/inf in x (it would surface as a diverging loss, blamed
    on the learning rate), negative labels or labels >= num_classes (when the format fixes it).
    Returns the class count: num_classes, or the largest label + 1."""
    if x.ndim != 4 or min(x.shape[1:]) < 1:
        raise DataError(f"{source}: x has shape {x.shape}; expected (N, C, H, W) with C, H, W >= 1")
    if x.shape[0] == 0:
        raise DataError(f"{source}: no examples (x has shape {x.shape}); expected at least one")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{source}: y has shape {y.shape}; expected one label per example, ({x.shape[0]},)")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: labels y have dtype {y.dtype}; expected integer class indices")
    finite = np.isfinite(x)
    if not finite.all():
        rows = np.flatnonzero(~finite.reshape(x.shape[0], -1).all(axis=1))
        raise DataError(f"{source}: x holds {int(finite.size - finite.sum())} NaN/inf values in {rows.size} "
                        f"examples (first: example {int(rows[0])}); expected finite numbers: fix or drop them")
    low, high = int(y.min()), int(y.max())
    if low < 0:
        raise DataError(f"{source}: label {low} at example {int(np.argmin(y))}; expected class indices >= 0")
    if num_classes is not None and high >= num_classes:
        raise DataError(f"{source}: label {high} at example {int(np.argmax(y))}; expected 0..{num_classes - 1}")
    return num_classes if num_classes is not None else high + 1
