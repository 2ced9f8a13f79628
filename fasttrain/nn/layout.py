"""The channel-blocked activation layout that flows through a model on the C++ backend.

The direct convolution engine (csrc/cpu/conv2d_direct.cpp) computes on a 16-channel-blocked layout;
converting each convolution's input and output between NCHW and that layout costs 25-60% of the
convolution itself. So inside a container, activations stay blocked from the first convolution the
engine runs to the global pool or flatten, and batchnorm, ReLU, the residual add and pooling work
on the blocked arrays directly.

A `Blocked` value is a C-contiguous float32 array (N, ceil(C/16), H + 2*halo, W + 2*halo, 16) with
the logical channel count C and a zero border `halo` (pixels) around the H x W interior: channel c
lives at [:, c // 16, ..., c % 16]. Invariants every producer keeps: the halo is zero and the pad
lanes (channels C..16*ceil(C/16)-1) are zero, so a following convolution reads the halo as its
zero padding and no reduction sees garbage.

The rules (NCHW stays the public layout):
- a layer says whether it takes a Blocked input (`Module.takes_blocked`); given one, it returns a
  Blocked output (or, at the exit to the classifier, a plain (N, C) array), and its backward takes
  dy in its output's layout and returns dx in its input's layout;
- a chain of layers (`forward_chain`, used by Sequential and Residual) converts to NCHW in front of
  a layer that does not take the blocked value, and converts its dx back; it enters the blocked
  layout in front of a layer whose `blocked_entry` asks for it (a convolution the direct engine
  runs); and it returns the layout it was given, so a model called with NCHW returns NCHW;
- `out_halo`, set on a layer by its container, is the halo its consumer reads without a copy
  (a padded 3x3 convolution's padding): a producer that can write it directly does; `out_stats`
  says the consumer is a training batchnorm, whose batch statistics a convolution's epilogue then
  computes (`Blocked.stats`) so the batchnorm skips its own statistics pass. Backward likewise:
  `dx_halo` is the halo the previous layer's backward reads its dy with (`dy_halo`: a
  convolution's data gradient reads dy zero-bordered), so a batchnorm writes dx straight into it.

FASTTRAIN_LAYOUT=nchw turns the flow off (every layer then converts on its own, as a single layer
called by a user does), for A/B measurements; the default `auto` flows whenever the engine runs.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from .. import settings

BLOCK = 16


def flow_enabled() -> bool:
    return settings.layout == "auto"


def cpp():
    """The compiled extension (the only backend with blocked kernels)."""
    return sys.modules.get("fasttrain._C")


class Blocked:
    """An activation in the channel-blocked layout (module docstring); `shape` is the logical NCHW shape."""

    __slots__ = ("data", "channels", "halo", "stats", "bn_request", "bn_sums", "shape", "dtype")

    def __init__(self, data, channels: int, halo: int = 0, stats=None):
        self.data, self.channels, self.halo = data, int(channels), int(halo)
        # optional (2, C) float64 [sum, sum of squares] of the interior, from its producer's epilogue
        # (a convolution feeding a training batchnorm): the batchnorm then skips its statistics pass
        self.stats = stats
        # Backward likewise (fasttrain/nn/norm.py, GradSums): on a training batchnorm's output, what
        # the data gradient of a convolution reading it needs to form the batchnorm's backward sums;
        # on that gradient, (request, (2, C) sums) when the convolution's epilogue wrote its final value
        self.bn_request = None
        self.bn_sums = None
        # formed once: the layers and containers ask for it many times per step
        n, _, hp, wp, _ = data.shape
        self.shape = (n, self.channels, hp - 2 * self.halo, wp - 2 * self.halo)
        self.dtype = data.dtype

    def interior(self):
        """The H x W interior (a view; strided when halo > 0)."""
        h = self.halo
        if h == 0:
            return self.data
        return self.data[:, :, h:self.data.shape[2] - h, h:self.data.shape[3] - h]

    def like(self, data):
        """Another Blocked value with this one's channels and halo (e.g. an elementwise result)."""
        return Blocked(data, self.channels, self.halo)

    def __repr__(self):
        return f"Blocked(shape={self.shape}, halo={self.halo})"


def blocked_shape(n: int, c: int, h: int, w: int, halo: int = 0) -> tuple:
    return n, -(-c // BLOCK), h + 2 * halo, w + 2 * halo, BLOCK


# A blocked pixel (16 float32) is one 64-byte cache line only when the array starts on a line.
# NumPy's allocator aligns to 16 bytes, which puts every pixel vector the kernels load or store
# across two lines (two cache accesses per load or store). Measured on the depthwise kernels (1
# thread, CPU time, loaded machine, medians of interleaved runs, aligned vs NumPy's arrays): maps
# that stay in cache 1.05-1.45x (128x256x8x8 stride 2 forward 1.2-1.4x, its fused backward
# 1.2-1.5x, 4x4 maps 1.05-1.2x), the data gradient 1.05-1.4x; the passes that stream from memory
# (64x64x32x32, 128x32x32x32 stride 2: forward + fused backward) 0.9-1.06x.
LINE = 64


def aligned_empty(shape, dtype=np.float32) -> np.ndarray:
    """np.empty(shape, dtype) starting on a 64-byte line (a view into a slightly larger buffer).
    math.prod and the array interface's address, not np.prod and .ctypes: a training step makes
    dozens of these between kernels that have just flushed the caches, where np.prod's reduction
    machinery and the ctypes object cost ~25 us a call (resnet8 b128, 1 thread, CPU time: 0.87 ->
    0.44 ms of allocation per step)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    buf = np.empty(nbytes + LINE, np.uint8)
    off = -buf.__array_interface__["data"][0] % LINE
    return buf[off:off + nbytes].view(dtype).reshape(shape)


def aligned_zeros(shape, dtype=np.float32) -> np.ndarray:
    out = aligned_empty(shape, dtype)
    out.fill(0)
    return out


def empty(n: int, c: int, h: int, w: int, halo: int = 0) -> Blocked:
    """An output buffer for a blocked kernel (they write the halo's and pad lanes' zeros themselves),
    line-aligned."""
    return Blocked(aligned_empty(blocked_shape(n, c, h, w, halo)), c, halo)


def lanes_of(v, blocks: int):
    """A per-channel vector (C,) spread over the lanes of `blocks` channel blocks, pad lanes 0,
    shaped (1, blocks, 1, 1, 16) to broadcast against blocked data."""
    out = np.zeros(blocks * BLOCK, np.float32)
    out[:v.shape[0]] = v
    return out.reshape(1, blocks, 1, 1, BLOCK)


def to_blocked(x, halo: int = 0) -> Blocked:
    """NCHW float32 -> Blocked with a zero halo of `halo` pixels."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return Blocked(cpp().to_blocked(x, halo, halo, halo, halo), x.shape[1], halo)


def to_nchw(b: Blocked):
    data = b.data if b.halo == 0 else np.ascontiguousarray(b.interior())
    return cpp().from_blocked(data, b.channels)


def padded(b: Blocked, top: int, bottom: int, left: int, right: int):
    """b's data with the given (possibly asymmetric) zero border instead of its halo: b's own array
    when it already has that border, else a copy (a convolution's backward reads dy so padded)."""
    h = b.halo
    if top == bottom == left == right == h:
        return b.data
    n, cb, hp, wp, _ = b.data.shape
    hh, ww = hp - 2 * h, wp - 2 * h
    if top == bottom == left == right:
        out = aligned_empty((n, cb, hh + 2 * top, ww + 2 * top, BLOCK))
        cpp().blocked_repad(b.data, b.channels, h, out, top)
        return out
    out = aligned_zeros((n, cb, top + hh + bottom, left + ww + right, BLOCK))
    out[:, :, top:top + hh, left:left + ww] = b.interior()
    return out


def with_halo(b: Blocked, halo: int) -> Blocked:
    return b if b.halo == halo else Blocked(padded(b, halo, halo, halo, halo), b.channels, halo)


def same_layout(v, like):
    """v (Blocked or NCHW) in the layout of `like`, converting only when they differ."""
    if isinstance(like, Blocked):
        if isinstance(v, Blocked):
            return with_halo(v, like.halo)
        return to_blocked(v, like.halo)
    return to_nchw(v) if isinstance(v, Blocked) else v


def add(a, b, inplace: bool = False):
    """a + b for two values of one logical shape; the result takes a's layout (in a's array when
    inplace). Pad lanes and halos add 0 + 0, so they stay zero."""
    if not isinstance(a, Blocked) and not isinstance(b, Blocked):
        if inplace:
            a += b
            return a
        return a + b
    b = same_layout(b, a)
    if not isinstance(a, Blocked):
        return a.__iadd__(b) if inplace else a + b
    # the compiled add runs on all the kernels' threads (NumPy's on one): a ResNet's residual
    # gradients are megabytes per block, the largest non-kernel cost of its step
    out = a if inplace else a.like(aligned_empty(a.data.shape))
    cpp().stream_add(a.data, b.data, out.data)
    out.bn_sums = None   # sums of a's old values (never attached where an add follows: a guard)
    return out


def as_nchw(v):
    """A public (NCHW) view of any activation, for observers (monitors, tests)."""
    return to_nchw(v) if isinstance(v, Blocked) else v


def data_of(v):
    """The array holding v (for identity checks: `a is b` on the arrays, not the wrappers)."""
    return v.data if isinstance(v, Blocked) else v


# ---- chains of layers --------------------------------------------------------------------------

_TO_NCHW, _TO_BLOCKED = "to_nchw", "to_blocked"


def forward_chain(layers, x, out_halo: int = 0, out_stats: bool = False):
    """Run `layers` in order on x (NCHW or Blocked) converting between layouts as the module
    docstring says; returns (y in x's layout (a 2-D y as it comes), trace for backward_chain).
    out_halo / out_stats: what the chain's consumer reads (the last layer's hints)."""
    trace = []
    given_blocked = isinstance(x, Blocked)
    for i, layer in enumerate(layers):
        step = None
        if isinstance(x, Blocked):
            if not layer.takes_blocked(x):
                step = (_TO_NCHW, 0)
                x = to_nchw(x)
        elif flow_enabled() and getattr(x, "ndim", 0) == 4 and isinstance(x, np.ndarray):
            halo = layer.blocked_entry(x)
            if halo is not None:
                step = (_TO_BLOCKED, 0)
                x = to_blocked(x, halo)
            else:
                layer.blocked_out = True   # the layer may start the flow itself (a stem)
        consumer = layers[i + 1] if i + 1 < len(layers) else None
        layer.out_halo = consumer.in_halo if consumer is not None else out_halo
        layer.out_stats = consumer.wants_stats if consumer is not None else out_stats
        trace.append(step)
        try:
            x = layer.forward(x)
        finally:
            layer.blocked_out = False   # a layer called on its own returns NCHW
    final = None
    if isinstance(x, Blocked) and not given_blocked:
        final = (_TO_NCHW, 0)
        x = to_nchw(x)
    elif given_blocked and not isinstance(x, Blocked) and getattr(x, "ndim", 0) == 4:
        final = (_TO_BLOCKED, 0)
        x = to_blocked(x, out_halo)
    trace.append(final)
    return x, trace


def _undo(step, dy):
    """The gradient of a layout conversion: the opposite conversion."""
    if step is None or dy is None:   # None: the first layer's dx, which no one reads
        return dy
    kind, halo = step   # a gradient goes back with the halo its producer's backward reads best
    return to_blocked(dy, halo) if kind == _TO_NCHW else to_nchw(dy)


def backward_chain(layers, dy, trace, after=None, into=None, complete=False):
    """Backward through the layers run by forward_chain (its trace); `after(i)` runs once layer i's
    backward is done (bucketed all-reduce starts there). into: the first layer's backward_into(dy,
    into) instead of backward (it may add its dx into `into`), when it has one and no conversion
    follows it.

    complete: the caller's promise that the chain's dx (with into: what backward_into leaves in
    `into`) is the whole gradient of the chain's input, nothing added to it later. Each layer is
    told the same of its own dx (`dx_complete`, for the duration of its backward): layer i > 0's
    input is layer i - 1's output and nothing else reads it, so always; layer 0's when the caller
    promised it. A convolution then forms a preceding batchnorm's backward sums in its epilogue
    (norm.GradSums): sums of a gradient that something still adds to would be wrong."""
    if trace is None:
        raise RuntimeError("backward called before forward")
    dy = _undo(trace[-1], dy)
    for i in reversed(range(len(layers))):
        layer = layers[i]
        # the halo the previous layer's backward reads its dy with, for a dx written blocked
        layer.dx_halo = layers[i - 1].dy_halo if i > 0 and trace[i] is None else 0
        use_into = i == 0 and into is not None and trace[0] is None and hasattr(layer, "backward_into")
        # layer 0 with into but without backward_into: the caller adds its dx to into afterwards
        layer.dx_complete = i > 0 or (complete and (into is None or use_into))
        try:
            if use_into:
                dy = layer.backward_into(dy, into)
            else:
                dy = _undo(trace[i], layer.backward(dy))
        finally:
            layer.dx_complete = False
        if after is not None:
            after(i)
    return dy
