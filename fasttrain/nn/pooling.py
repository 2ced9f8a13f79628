"""Pooling layers over NCHW input: MaxPool2d, AvgPool2d and GlobalAvgPool2d ((N, C, H, W) ->
(N, C)), with torch.nn's arguments, in its order and with its defaults.

Output size P = (H + 2*padding - dilation*(kernel - 1) - 1) / stride + 1, rounded down, or up
with ceil_mode (a last window starting beyond the input and its top/left padding is dropped, as
in torch). Padding is limited to half the kernel (as in torch), so every window holds at least
one real element. AvgPool2d counts the padding in the divisor unless count_include_pad=False;
MaxPool2d(return_indices=True) returns (y, indices), indices the flat position h*W + w of each
maximum in its input plane, as torch's. Without return_indices the layer keeps, for its backward,
each maximum's window tap (one byte, `maxpool2d_taps_*`) instead: the same maximum, an eighth of
the index bytes (windows of more than 256 taps, and CuPy arrays, keep the flat int64 index).
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..kernels.pooling import out_size
from ._util import array_module as _array_module
from ._util import pair as _pair
from .layout import Blocked, cpp, empty, with_halo
from .module import Module


def _check_nchw(x, where):
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{where}: expected input (N, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{where}: expected a float32 or float64 input, got {x.dtype}")


class _Pool2d(Module):
    # on the blocked layout (fasttrain/nn/layout.py) the pools run their blocked kernels, with the
    # same arguments; `_blocked` says which layout the last forward saw
    cache_attrs = ("cache", "_blocked")
    _blocked = False

    def takes_blocked(self, x) -> bool:
        return True

    def forward(self, x):
        self._blocked = isinstance(x, Blocked)
        return self._forward_blocked(x) if self._blocked else self._forward(x)

    def backward(self, dy):
        if not self._blocked:
            return self._backward(dy)
        shape = (self.cache or (None,))[-1]
        if not isinstance(dy, Blocked) or dy.shape != shape:
            raise ValueError(f"{self._where()}: expected dy {shape} in the blocked layout (the forward output's), "
                             f"got {getattr(dy, 'shape', type(dy).__name__)}")
        return self._backward_blocked(with_halo(dy, 0))

    def _blocked_out(self, x):
        return empty(*self._out_shape(x), self.out_halo)

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        where = f"{type(self).__name__}(kernel_size={kernel_size!r})"
        self.kernel_size = _pair("kernel_size", kernel_size, where, 1)
        self.stride = self.kernel_size if stride is None else _pair("stride", stride, where, 1)
        self.padding = _pair("padding", padding, where, 0)
        self.dilation = _pair("dilation", dilation, where, 1)
        self.ceil_mode = bool(ceil_mode)
        for p, k in zip(self.padding, self.kernel_size):
            if 2 * p > k:
                raise ValueError(f"{where}: padding must be at most half the kernel size, got padding={padding!r}")

    def extra_repr(self) -> str:
        extra = f", dilation={self.dilation}" if self.dilation != (1, 1) else ""
        extra += ", ceil_mode=True" if self.ceil_mode else ""
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}{extra}"

    def _where(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def _out_shape(self, x):
        if not isinstance(x, Blocked):
            _check_nchw(x, self._where())
        n, c, h, w = x.shape
        p, q = (out_size(size, k, s, pad, d, self.ceil_mode)
                for size, k, s, pad, d in zip((h, w), self.kernel_size, self.stride, self.padding, self.dilation))
        if p < 1 or q < 1:
            span = [d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size)]
            raise ValueError(f"{self._where()}: input {x.shape} is too small, output would be {p} x {q}; "
                             f"expected H + 2*padding >= {span[0]} and W + 2*padding >= {span[1]}")
        return n, c, p, q

    def _args(self):
        return (*self.kernel_size, *self.stride, *self.padding, self.ceil_mode)

    def _check_dy(self, dy, shape, dtype):
        if self.cache is None:
            raise RuntimeError(f"{self._where()}: backward called before forward")
        if dy.shape != shape or dy.dtype != dtype:
            raise ValueError(f"{self._where()}: expected dy {shape} {dtype} (the forward output), got {dy.shape} {dy.dtype}")
        return _array_module(dy).ascontiguousarray(dy)


class MaxPool2d(_Pool2d):
    """Maximum over each window; backward routes dy to the (first) maximum's position."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        self.return_indices = bool(return_indices)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", return_indices=True" if self.return_indices else "")

    def takes_blocked(self, x) -> bool:
        # the indices a user asks for are positions in NCHW planes; the blocked kernel records one
        # byte per maximum (its window tap), so windows of more than 256 taps stay NCHW too
        return not self.return_indices and self.kernel_size[0] * self.kernel_size[1] <= 256

    def _forward(self, x):
        shape = self._out_shape(x)
        xp = _array_module(x)
        x = xp.ascontiguousarray(x)
        y = xp.empty(shape, x.dtype)
        # the tap form where the indices stay inside the layer (CUDA has only the flat form)
        taps = not self.return_indices and xp is np and self.kernel_size[0] * self.kernel_size[1] <= 256
        if taps:
            index = np.empty(shape, np.uint8)
            backend.kernel("maxpool2d_taps_fwd", like=x)(x, y, index, *self._args(), *self.dilation)
        else:
            index = xp.empty(shape, np.int64)
            backend.kernel("maxpool2d_fwd", like=x)(x, y, index, *self._args(), *self.dilation)
        self.cache = (index, taps, x.shape, y.shape, x.dtype)
        return (y, index.copy()) if self.return_indices else y

    def _backward(self, dy):
        index, taps, x_shape, y_shape, dtype = self.cache or (None,) * 5
        dy = self._check_dy(dy, y_shape, dtype)
        dx = _array_module(dy).empty(x_shape, dy.dtype)
        if taps:
            backend.kernel("maxpool2d_taps_bwd", like=dy)(dy, index, dx, *self._args(), *self.dilation)
        else:
            backend.kernel("maxpool2d_bwd", like=dy)(dy, index, dx)
        return dx

    def _forward_blocked(self, x):
        y = self._blocked_out(x)
        taps = np.empty(y.data.shape[:2] + y.shape[2:] + (16,), np.uint8)
        cpp().maxpool2d_blocked_fwd(x.data, y.data, taps, *self._args(), *self.dilation, halo_x=x.halo,
                                    halo_y=y.halo)
        self.cache = (taps, x.shape, y.shape)
        return y

    def _backward_blocked(self, dy):
        taps, (n, c, h, w), _ = self.cache
        dx = empty(n, c, h, w)
        cpp().maxpool2d_blocked_bwd(dy.data, taps, dx.data, *self._args(), *self.dilation)
        return dx


class AvgPool2d(_Pool2d):
    """Mean over each window; the divisor counts the padding (kernel_h * kernel_w inside the padded
    input) unless count_include_pad=False (then: the window's taps inside the input). With
    divisor_override (PyTorch's option: a nonzero int, negative allowed) every window's sum is divided by
    that number instead."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = None
        # PyTorch's rule: any nonzero int (a negative one flips the sign), a TypeError for other types
        if divisor_override is not None and (isinstance(divisor_override, bool) or not isinstance(divisor_override, int)):
            raise TypeError(f"{self._where()}: divisor_override must be None or a nonzero int, got {divisor_override!r}")
        if divisor_override == 0:
            raise ValueError(f"{self._where()}: divisor_override must be None or a nonzero int, got 0")
        self.divisor_override = divisor_override

    def extra_repr(self) -> str:
        return (super().extra_repr() + ("" if self.count_include_pad else ", count_include_pad=False")
                + ("" if self.divisor_override is None else f", divisor_override={self.divisor_override}"))

    def _kernel_args(self):
        return (*self._args(), self.count_include_pad, self.divisor_override or 0)

    def takes_blocked(self, x) -> bool:
        return self.divisor_override is None   # the blocked kernels have no divisor_override: NCHW then

    def _forward(self, x):
        shape = self._out_shape(x)
        xp = _array_module(x)
        x = xp.ascontiguousarray(x)
        y = xp.empty(shape, x.dtype)
        backend.kernel("avgpool2d_fwd", like=x)(x, y, *self._kernel_args())
        self.cache = (x.shape, y.shape, x.dtype)
        return y

    def _backward(self, dy):
        x_shape, y_shape, dtype = self.cache or (None, None, None)
        dy = self._check_dy(dy, y_shape, dtype)
        dx = _array_module(dy).empty(x_shape, dy.dtype)
        backend.kernel("avgpool2d_bwd", like=dy)(dy, dx, *self._kernel_args())
        return dx

    def _forward_blocked(self, x):
        y = self._blocked_out(x)
        cpp().avgpool2d_blocked_fwd(x.data, y.data, *self._args(), self.count_include_pad, halo_x=x.halo,
                                    halo_y=y.halo)
        self.cache = (x.shape, y.shape)
        return y

    def _backward_blocked(self, dy):
        (n, c, h, w), _ = self.cache
        dx = empty(n, c, h, w)
        cpp().avgpool2d_blocked_bwd(dy.data, dx.data, *self._args(), self.count_include_pad)
        return dx


class GlobalAvgPool2d(Module):
    """(N, C, H, W) -> (N, C), the mean over each plane (Lin et al., "Network in Network", 2014).
    A single contiguous reduction, which NumPy/CuPy already run at memory bandwidth, so no kernel.
    On the blocked layout (fasttrain/nn/layout.py) it is the exit to the classifier: a Blocked x
    gives the plain (N, C) output, and backward the Blocked dx."""

    def takes_blocked(self, x) -> bool:
        return True

    def forward(self, x):
        if isinstance(x, Blocked):
            self.cache = (x.shape, x.dtype, True)
            y = np.empty(x.shape[:2], np.float32)
            cpp().global_avgpool_blocked_fwd(x.data, y, x.channels, halo_x=x.halo)
            return y
        _check_nchw(x, "GlobalAvgPool2d()")
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"GlobalAvgPool2d(): expected H, W >= 1, got input {x.shape}")
        self.cache = (x.shape, x.dtype, False)
        return x.mean(axis=(2, 3))

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError("GlobalAvgPool2d(): backward called before forward")
        (n, c, h, w), dtype, blocked = self.cache
        if dy.shape != (n, c) or dy.dtype != dtype:
            raise ValueError(f"GlobalAvgPool2d(): expected dy {(n, c)} {dtype} (the forward output), "
                             f"got {dy.shape} {dy.dtype}")
        if blocked:
            dx = empty(n, c, h, w)
            cpp().global_avgpool_blocked_bwd(np.ascontiguousarray(dy), dx.data)
            return dx
        xp = _array_module(dy)
        dx = xp.empty((n, c, h, w), dtype)
        dx[...] = (dy / (h * w))[:, :, None, None]
        return dx
