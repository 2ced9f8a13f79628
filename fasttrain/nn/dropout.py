"""Dropout (Srivastava et al., JMLR 2014), inverted: kept units are scaled by 1/(1-p) at training
time so evaluation is the identity.

The mask comes from Philox-4x32-10 keyed by (seed, step, layer) (docs/KERNELS.md), so backward
regenerates it: the layer stores nothing but the input shape and the mask's key. `step` advances
by one at every training forward (`Module.draw_step`), so a plain training loop draws a fresh
mask each step; the trainer sets it to its own step (`Module.set_step`), and checkpoints keep it;
`layer_id` tells layers apart, so two Dropout layers in one model draw different masks at the
same step. Without an explicit layer_id it is a hash of the layer's path in its model ('3',
'5.body.2': `layer_key`), so a layer draws the same masks in every model built the same way,
whatever was built before it in the process, and in a pipeline stage (which holds the layers under
their paths in the whole model) as in the whole model.

`rows = (start, total)` says the next forward sees rows [start, start + n) of a batch of `total`
rows (a pipeline's micro-batch): the layer then applies those rows of the whole batch's mask, so
a micro-batch's examples are dropped exactly as in the whole batch, whatever the cut.
"""
from __future__ import annotations

import zlib

import numpy as np

from ..backend import kernel
from .module import Module

_U32 = 2 ** 32


def check_layer_id(where: str, layer_id):
    """layer_id as an int, or None (the layer's path keys its draws: `layer_key`)."""
    if layer_id is not None and (isinstance(layer_id, bool) or not isinstance(layer_id, (int, np.integer))
                                 or not 0 <= layer_id < _U32):
        raise ValueError(f"{where}(layer_id): expected an int in [0, 2**32) or None, got {layer_id!r}")
    return None if layer_id is None else int(layer_id)


def layer_key(module) -> int:
    """The layer word of a stochastic module's Philox key: its explicit layer_id, else a CRC-32 of
    its path in its model (stable across processes and runs, unlike Python's hash of a str)."""
    if module.layer_id is not None:
        return module.layer_id
    return zlib.crc32(f"fasttrain.layer:{module._path}".encode())


class Dropout(Module):
    stochastic = True

    def __init__(self, p: float = 0.5, seed: int = 0, layer_id: int | None = None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) or not 0 <= p < 1:
            raise ValueError(f"Dropout(p): expected a probability in [0, 1), got {p!r}")
        if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 64:
            raise ValueError(f"Dropout(seed): expected an int in [0, 2**64), got {seed!r}")
        self.p = float(p)
        self.seed = int(seed)
        self.layer_id = check_layer_id("Dropout", layer_id)
        self.rows = None      # (start, total): the next forward's rows within the whole batch
        self._keep = None     # ((key, total, per-row size), the whole batch's uint8 keep mask)

    def extra_repr(self):
        return f"p={self.p}, seed={self.seed}, layer_id={self.layer_id}"

    def _key(self):
        return self.p, self.seed, self.draw_step(), layer_key(self)

    def forward(self, x):
        if getattr(x, "dtype", None) not in (np.float32, np.float64):
            raise TypeError(f"Dropout: expected a float32 or float64 array, got {getattr(x, 'dtype', type(x).__name__)}")
        # the cache is the shape and the mask's key (a few ints), never the mask itself; keeping
        # the key means a set_step between forward and backward cannot desynchronize the masks
        key = self._key() if self.training and self.p > 0 else None
        rows = self.rows if key is not None else None
        self.cache = (tuple(x.shape), key, rows)
        if key is None:
            return x
        x = np.ascontiguousarray(x)
        y = np.empty_like(x)
        self._apply("dropout_fwd", x, y, key, rows)
        return y

    def _apply(self, op, a, out, key, rows):
        if rows is None:
            kernel(op, like=a)(a, out, *key)
            return
        start, total = rows
        per = a.size // a.shape[0]
        if self._keep is None or self._keep[0] != (key, total, per):
            whole = np.empty(total * per, np.uint8)
            kernel("dropout_mask", like=whole)(whole, *key)
            self._keep = ((key, total, per), whole)
        keep = self._keep[1][start * per:(start + a.shape[0]) * per].reshape(a.shape).view(bool)
        # the formula of the reference kernel, so the values equal the whole batch's bit for bit
        np.multiply(np.where(keep, a, 0), a.dtype.type(1.0 / (1.0 - self.p)), out=out)

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError("Dropout.backward: call forward first")
        shape, key, rows = self.cache
        if tuple(dy.shape) != shape:
            raise ValueError(f"Dropout.backward: expected dy of shape {shape} (the forward output), got {tuple(dy.shape)}")
        if key is None:
            return dy
        dy = np.ascontiguousarray(dy)
        dx = np.empty_like(dy)
        self._apply("dropout_bwd", dy, dx, key, rows)
        return dx
