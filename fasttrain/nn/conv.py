"""2-D convolution over NCHW input, with an optional fused ReLU epilogue.

The arguments follow torch.nn.Conv2d (in the same order): `groups` splits the channels into that
many independent convolutions (groups == in_channels: depthwise), `dilation` spaces the kernel
taps, and `padding` is an int, a pair, 'valid' (no padding) or 'same' (output size = input size;
stride 1 only, as in PyTorch). When 'same' needs an odd total padding along an axis (an even
kernel span), the extra row or column goes at the bottom or right, as PyTorch does: the input is
padded explicitly by that one row/column, so the kernels only ever see symmetric padding.
`padding_mode` 'reflect', 'replicate' or 'circular' (PyTorch's) pads the input explicitly in that
mode (fasttrain/nn/padding.py, as PyTorch does) and convolves without padding; the padding's
gradient folds back onto the input pixels it copied.

When the C++ kernels run this layer through their direct engine (csrc/cpu/conv2d_direct.cpp, on a
16-channel-blocked layout), the layer calls the engine's blocked entry points itself: x is
converted to the blocked layout once in the forward and kept for the weight gradient, and dy once
for both gradients, instead of once per kernel call (the NCHW entry points convert every input
and output of every call). Inside a container the layer takes and returns the blocked layout itself
(fasttrain/nn/layout.py), so a chain of such layers converts once at each end.
"""
from __future__ import annotations

import sys

import numpy as np

from .. import init as initializers
from .. import settings
from ..backend import kernel
from . import norm
from . import padding as padmod
from ._util import array_module, check_grad, check_input, check_params, pair, params_match
from .layout import Blocked, aligned_empty, cpp, empty, padded, to_nchw, with_halo
from .module import Module

_CHOICES: dict = {}   # Conv2d._choice's answers
_CHOICES_MAX = 4096
_UNKNOWN = object()


def _remembered(cache: dict, key, compute, limit: int):
    """cache[key], computed by compute() on the first ask. Shapes change without end only in odd
    uses: the cache is emptied when it reaches `limit` entries, so it stays bounded."""
    found = cache.get(key, _UNKNOWN)
    if found is _UNKNOWN:
        if len(cache) >= limit:
            cache.clear()
        found = cache[key] = compute()
    return found


class Conv2d(Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, init="he_normal", relu: bool = False, padding_mode: str = "zeros"):
        super().__init__()
        where = f"Conv2d(in_channels={in_channels}, out_channels={out_channels})"
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{where}: {name} must be a positive int, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{where}: groups must divide in_channels and out_channels, got groups={groups}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = pair("kernel_size", kernel_size, where, 1)
        self.stride = pair("stride", stride, where, 1)
        self.dilation = pair("dilation", dilation, where, 1)
        self.padding_arg = padding
        # (top, left) padding given to the kernels, and the extra (bottom, right) row/column the
        # layer adds itself (only 'same' with an even kernel span needs one)
        self.padding, self._extra = self._resolve_padding(padding, where)
        if padding_mode not in padmod.MODES:
            raise ValueError(f"{where}: padding_mode must be one of {', '.join(map(repr, padmod.MODES))}, "
                             f"got {padding_mode!r}")
        self.padding_mode = padding_mode
        # non-zero modes: the layer pads its input itself (top, bottom, left, right), 'same''s extra
        # row/column included, and the kernels run without padding (_kpad)
        self._explicit = None
        if padding_mode != "zeros" and (any(self.padding) or any(self._extra)):
            (ph, pw), (eh, ew) = self.padding, self._extra
            self._explicit, self._extra = (ph, ph + eh, pw, pw + ew), (0, 0)
        self._kpad = (0, 0) if self._explicit else self.padding
        self.relu = bool(relu)
        self.has_bias = bias
        # fans from (K, C/groups, R, S): each output sees C/groups * R * S inputs
        self.weight = self.add_param("weight", (out_channels, in_channels // groups, *self.kernel_size),
                                     initializers.get(init))
        self.bias = self.add_param("bias", (out_channels,), initializers.zeros(), decay=False) if bias else None
        self._zero_bias = None

    def _resolve_padding(self, padding, where):
        if isinstance(padding, str):
            if padding == "valid":
                return (0, 0), (0, 0)
            if padding != "same":
                raise ValueError(f"{where}: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
            if self.stride != (1, 1):
                raise ValueError(f"{where}: padding='same' needs stride 1 (the output size would depend on where "
                                 f"the stride starts), got stride={self.stride}")
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            return (total[0] // 2, total[1] // 2), (total[0] % 2, total[1] % 2)
        return pair("padding", padding, where, 0), (0, 0)

    def extra_repr(self):
        extra = "".join(f", {k}={v!r}" for k, v, default in (("dilation", self.dilation, (1, 1)),
                                                             ("groups", self.groups, 1),
                                                             ("padding_mode", self.padding_mode, "zeros")) if v != default)
        padding = self.padding_arg if isinstance(self.padding_arg, str) else self.padding
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={padding}{extra}, bias={self.has_bias}, relu={self.relu}")

    def _geometry(self):
        return (*self.stride, *self._kpad)

    def _b(self, x):
        if self.bias is not None:
            return self.bias.data
        if self._zero_bias is None or self._zero_bias.dtype != x.dtype:
            self._zero_bias = array_module(x).zeros(self.out_channels, x.dtype)
        return self._zero_bias

    def _out_shape(self, n, h, w):
        (r, s), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self._kpad, self.dilation
        return n, self.out_channels, (h + 2 * ph - dh * (r - 1) - 1) // sh + 1, (w + 2 * pw - dw * (s - 1) - 1) // sw + 1

    def _options(self):
        return (*self.dilation, self.groups)

    def _choice(self, op, arr, x_shape, blocked=False):
        """The algorithm fasttrain._C runs conv2d_<op> with for this shape when the registry runs
        `op` for `arr` there, else None; blocked: for activations kept in the blocked layout."""
        C = sys.modules.get("fasttrain._C")
        if C is None:
            return None
        # Asked several times per layer and step (three ops, forward and backward): remembered
        # per shape. The key holds everything the answer depends on: the registry's pick (backend
        # setting, array type and dtype) and the engine's settings (forced algorithm and ISA).
        key = (op, tuple(x_shape), blocked, self.out_channels, self.kernel_size, self._geometry(), self._options(),
               settings.backend, type(arr), arr.dtype, C.conv2d_algo(), C.conv2d_isa())

        def choose():
            if kernel(op, like=arr) is not getattr(C, op, None):
                return None
            n, c, h, w = x_shape
            return C.conv2d_choice(op[len("conv2d_"):], n, c, h, w, self.out_channels, *self.kernel_size,
                                   *self._geometry(), *self._options(), blocked=blocked)
        return _remembered(_CHOICES, key, choose, _CHOICES_MAX)

    def _engine(self, op, arr, x_shape, blocked=False):
        """_choice with 'winograd-blocked' / 'winograd43-blocked' read as 'direct': that Winograd runs inside the direct
        engine's blocked entry points (same arguments, same layouts), which pick it themselves."""
        found = self._choice(op, arr, x_shape, blocked)
        return "direct" if found in ("winograd-blocked", "winograd43-blocked") else found

    def _direct_engine(self, op, arr, x_shape):
        """fasttrain._C when the registry runs `op` for `arr` there and that runs the direct engine
        for this shape (else None)."""
        return sys.modules.get("fasttrain._C") if self._engine(op, arr, x_shape) == "direct" else None

    # -- the blocked layout (fasttrain/nn/layout.py) -----------------------------------------------
    # Two engines take it: the direct convolution (groups 1, no dilation) and the blocked depthwise
    # convolution (groups == in == out channels). The flow follows the engine's choice for
    # activations kept blocked (conv2d_choice(blocked=True): no conversions to pay, so 1x1 kernels
    # and few-channel stems run direct too), for all three ops.
    @property
    def in_halo(self):
        ph, pw = self._kpad
        return ph if ph == pw else 0

    def _blocked_kind(self, arr, x_shape):
        """'direct', 'depthwise' or None: which blocked engine runs this layer for `arr`."""
        if any(self._extra) or self._explicit or arr.dtype != np.float32:
            return None
        if self.groups == 1 and self.dilation == (1, 1):
            kind = "direct"
        elif self.groups == self.in_channels == self.out_channels:
            kind = "depthwise"
        else:
            return None
        # asked by the container and the layer several times per step: remembered per layer, keyed
        # like _choice's answers (the registry's pick and the engine's settings)
        C = sys.modules.get("fasttrain._C")
        key = (tuple(x_shape), settings.backend, type(arr), C and C.conv2d_algo(), C and C.conv2d_isa())
        ops = ("conv2d_fwd", "conv2d_bwd_data", "conv2d_bwd_weight")
        return _remembered(self.__dict__.setdefault("_kinds", {}), key,
                           lambda: kind if all(self._engine(op, arr, x_shape, blocked=True) == kind for op in ops)
                           else None, 64)

    def _dy_pads(self, h, w):
        """conv2d_blocked_dy_pads for an h x w input (asked in every backward: remembered)."""
        return _remembered(self.__dict__.setdefault("_dy_pads_of", {}), (h, w),
                           lambda: cpp().conv2d_blocked_dy_pads(h, w, *self.kernel_size, *self._geometry()), 64)

    def takes_blocked(self, x) -> bool:
        return x.shape[1] == self.in_channels and self._blocked_kind(x.data, x.shape) is not None

    def _stem(self, x) -> bool:
        """Whether the stem kernel runs this layer: NCHW x of few channels (a network's input) in,
        blocked y out (converting x would pad 3 channels to 16 lanes). Chosen by the shape alone,
        not by x's layout (a blocked x is converted to NCHW first, exactly), so the result does not
        depend on where a container's flow starts (a pipeline stage's first layer)."""
        data = x.data if isinstance(x, Blocked) else x
        return x.shape[1] == self.in_channels < 16 and self._blocked_kind(data, x.shape) == "direct"

    def blocked_entry(self, x):
        if x.shape[1] != self.in_channels or self._stem(x) or self._blocked_kind(x, x.shape) is None:
            return None
        return self.in_halo

    def _forward_blocked(self, x):
        """x Blocked, or NCHW for the stem; y Blocked."""
        stem = self.groups == 1 and self._stem(x)
        from_blocked = stem and isinstance(x, Blocked)   # then dx goes back blocked
        if from_blocked:
            x = to_nchw(x)
        data = x if stem else x.data
        if not params_match(self, data.dtype):   # the message only when the check fails (every step)
            check_params(f"Conv2d(in_channels={self.in_channels})", self, data)
        n, _, h, w = x.shape
        _, k, p, q = self._out_shape(n, h, w)
        if p < 1 or q < 1:
            self._check_fits(f"Conv2d(in_channels={self.in_channels})", x.shape, (n, k, p, q))
        (sh, sw, ph, pw), C = self._geometry(), cpp()
        # the batch statistics of y for a training batchnorm that reads it, from the epilogue
        stats = np.empty((2, k), np.float64) if self.out_stats else None
        if self.groups > 1:   # depthwise: reads any input halo as zeros, writes the output's halo
            y = empty(n, k, p, q, self.out_halo)
            C.depthwise_blocked_fwd(x.data, self.weight.data, self._b(x.data), y.data, sh, sw, ph, pw, self.relu,
                                    *self.dilation, halo_x=x.halo, halo_y=y.halo, stats=stats)
            y.stats = stats
            self.cache = (x.shape, y if self.relu else None, x, "depthwise")
            return y
        y = empty(n, k, p, q)
        if stem:
            x = np.ascontiguousarray(x)
            C.conv2d_stem_fwd(x, self.weight.data, self._b(x), y.data, sh, sw, ph, pw, self.relu, stats)
            saved, kind = (x, from_blocked), "stem"
        else:
            if x.halo >= max(ph, pw):   # a wider zero halo than the padding is read in place
                xb, hx = x.data, x.halo
            else:
                xb, hx = padded(x, ph, ph, pw, pw), -1
            C.conv2d_blocked_fwd(xb, self.weight.data, self._b(xb), y.data, sh, sw, ph, pw, self.relu, stats,
                                 halo_x=hx)
            # x's producer, a training batchnorm, may want its backward sums from the data gradient
            saved, kind = (xb, hx, x.bn_request), "direct"
        y.stats = stats
        self.cache = (x.shape, y if self.relu else None, saved, kind)
        return y

    @property
    def dy_halo(self):
        """The data gradient reads dy zero-bordered by conv2d_blocked_dy_pads (asymmetric at stride 2):
        a producer writing dy with the widest of those pads as its halo saves the copy."""
        if self.cache is None or self.cache[3] not in ("direct", "stem"):
            return 0
        n, c, h, w = self.cache[0]
        return max(self._dy_pads(h, w))

    def backward_into(self, dy, dx):
        """backward(dy) added into dx (a Blocked of the input's shape, halo 0) instead of a fresh
        array, returning dx: a residual block's shortcut adds its data gradient straight into the
        body's, with no separate sum pass (and a 1x1 stride-2 shortcut touches only the pixels it
        reads). Where this layer cannot, backward(dy) (the caller adds)."""
        if (self.cache is None or self.cache[3] != "direct" or not self.needs_input_grad or not isinstance(dy, Blocked)
                or not isinstance(dx, Blocked) or dx.halo or dx.shape != self.cache[0]):
            complete, self.dx_complete = self.dx_complete, False   # the caller adds this dx to its own
            try:
                return self.backward(dy)
            finally:
                self.dx_complete = complete
        return self._backward_blocked(dy, into=dx, complete=self.dx_complete)

    def _bn_sums_args(self, saved, complete):
        """The keyword arguments by which conv2d_blocked_bwd_data forms the backward sums of the
        training batchnorm whose output this layer read (norm.GradSums), and the sums' array; ({},
        None) where there is none, or where dx is not the whole gradient of that output
        (`complete`: else something adds to it after the epilogue saw it)."""
        request = saved[2]
        if request is None or not complete or not norm.FUSE_BWD_SUMS:
            return {}, None
        sums = np.empty((2, request.x.channels), np.float64)
        return {"bn_sums": sums, "bn_x": request.x.data, "halo_bn_x": request.x.halo, "bn_mean": request.mean,
                "bn_invstd": request.invstd, "bn_gamma": request.gamma, "bn_beta": request.beta}, sums

    def _backward_blocked(self, dy, into=None, complete=None):
        if complete is None:
            complete = self.dx_complete
        x_shape, y, saved, kind = self.cache
        n, c, h, w = x_shape
        shape = self._out_shape(n, h, w)
        if not isinstance(dy, Blocked) or dy.shape != shape:
            raise ValueError(f"Conv2d.backward: expected dy {shape} in the blocked layout (the forward output's), "
                             f"got {getattr(dy, 'shape', type(dy).__name__)}")
        if y is not None:  # the fused ReLU's gradient: y > 0 exactly where the pre-activation was > 0
            dy = with_halo(dy, y.halo)
            masked = aligned_empty(dy.data.shape)
            kernel("relu_bwd", like=masked)(y.data, dy.data, masked)
            dy = dy.like(masked)
        C, g = cpp(), self._geometry()
        db = self.bias.grad if self.bias is not None else np.zeros(self.out_channels, np.float32)
        dx = into if into is not None else empty(n, c, h, w) if self.needs_input_grad else None
        if kind == "depthwise":   # both gradients in one pass over dy where dx is wanted
            if dx is None:
                C.depthwise_blocked_bwd_weight(saved.data, dy.data, self.weight.grad, db, *g, *self.dilation,
                                               halo_x=saved.halo, halo_dy=dy.halo)
            else:
                C.depthwise_blocked_bwd(saved.data, dy.data, self.weight.data, dx.data, self.weight.grad, db, *g,
                                        *self.dilation, halo_x=saved.halo, halo_dy=dy.halo)
            return dx
        # the data gradient reads dy with a zero halo as wide as its widest pad (the weight
        # gradients read any halo)
        need = max(self._dy_pads(h, w)) if dx is not None else 0
        if dy.halo < need:
            dy = with_halo(dy, need)
        if kind == "stem":
            C.conv2d_stem_bwd_weight(saved[0], dy.data, self.weight.grad, db, *g, halo_dy=dy.halo)
        else:
            C.conv2d_blocked_bwd_weight(saved[0], dy.data, self.weight.grad, db, *g, halo_x=saved[1],
                                        halo_dy=dy.halo)
        if dx is None:   # the network's first layer: no one reads dx
            return None
        kw, sums = self._bn_sums_args(saved, complete) if kind == "direct" else ({}, None)
        C.conv2d_blocked_bwd_data(dy.data, self.weight.data, dx.data, *g, halo_dy=dy.halo,
                                  accumulate=into is not None, **kw)
        if sums is not None:
            dx.bn_sums = (saved[2], sums)
        return to_nchw(dx) if kind == "stem" and not saved[1] else dx

    def _check_fits(self, where: str, in_shape, out_shape) -> None:
        if out_shape[2] < 1 or out_shape[3] < 1:
            span = tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size))
            raise ValueError(f"{where}: input {tuple(in_shape)} is too small for kernel {self.kernel_size} "
                             f"(span {span} with dilation {self.dilation}) with padding {self.padding}; expected "
                             f"H + 2*padding >= {span[0]} and W + 2*padding >= {span[1]}")

    def forward(self, x):
        if isinstance(x, Blocked) or (self.blocked_out and self._stem(x)):
            return self._forward_blocked(x)
        where = f"Conv2d(in_channels={self.in_channels})"
        x = check_input(where, x, f"(N, {self.in_channels}, H, W)", 4, {1: self.in_channels})
        check_params(where, self, x)
        if self._explicit:
            padmod.check(self.padding_mode, x.shape[2], x.shape[3], self._explicit, where)
            x = padmod.pad(x, self._explicit, self.padding_mode, array_module(x))
        elif any(self._extra):
            xp = array_module(x)
            x = xp.pad(x, ((0, 0), (0, 0), (0, self._extra[0]), (0, self._extra[1])))
        n, _, h, w = x.shape
        shape = self._out_shape(n, h, w)
        self._check_fits(where, x.shape, shape)
        C = self._direct_engine("conv2d_fwd", x, x.shape)
        xb = None
        if C is not None:
            sh, sw, ph, pw = self._geometry()
            xb = C.to_blocked(x, ph, ph, pw, pw)
            yb = aligned_empty((n, -(-self.out_channels // 16), *shape[2:], 16))
            C.conv2d_blocked_fwd(xb, self.weight.data, self._b(x), yb, sh, sw, ph, pw, self.relu)
            y = C.from_blocked(yb, self.out_channels)
        else:
            y = array_module(x).empty(shape, x.dtype)
            kernel("conv2d_fwd", like=x)(x, self.weight.data, self._b(x), y, *self._geometry(), self.relu,
                                         *self._options())
        self.cache = (x, y if self.relu else None, xb, None)
        return y

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError("Conv2d.backward: backward called before forward")
        x, y, xb, blocked_kind = self.cache
        if blocked_kind is not None:
            return self._backward_blocked(dy)
        n, c, h, w = x.shape
        dy = check_grad("Conv2d.backward", x, dy, self._out_shape(n, h, w), x.dtype)
        xp = array_module(dy)
        if y is not None:
            # the fused ReLU's gradient: y > 0 exactly where the pre-activation was > 0
            masked = xp.empty_like(dy)
            kernel("relu_bwd", like=dy)(y, dy, masked)
            dy = masked
        db = self.bias.grad if self.bias is not None else xp.zeros(self.out_channels, dy.dtype)
        C = self._direct_engine("conv2d_bwd_data", dy, x.shape) if xb is not None else None
        if C is not None and self._direct_engine("conv2d_bwd_weight", dy, x.shape) is C:
            g = self._geometry()
            dyb = C.to_blocked(dy, *C.conv2d_blocked_dy_pads(h, w, *self.kernel_size, *g))
            C.conv2d_blocked_bwd_weight(xb, dyb, self.weight.grad, db, *g)
            if not self.needs_input_grad:
                return None
            dxb = aligned_empty((n, xb.shape[1], h, w, 16))
            C.conv2d_blocked_bwd_data(dyb, self.weight.data, dxb, *g)
            dx = C.from_blocked(dxb, c)
        else:
            kernel("conv2d_bwd_weight", like=dy)(x, dy, self.weight.grad, db, *self._geometry(), *self._options())
            if not self.needs_input_grad:  # the network's first layer: no one reads dx
                return None
            dx = xp.empty_like(x)
            kernel("conv2d_bwd_data", like=dy)(dy, self.weight.data, dx, *self._geometry(), *self._options())
        if self._explicit:  # the padding copied input pixels: their gradients go back to them
            top, bottom, left, right = self._explicit
            dx = padmod.pad_grad(dx, (n, c, h - top - bottom, w - left - right), self._explicit, self.padding_mode, xp)
        elif any(self._extra):  # the explicit bottom/right padding of 'same' gets no gradient
            dx = xp.ascontiguousarray(dx[:, :, :h - self._extra[0], :w - self._extra[1]])
        return dx
