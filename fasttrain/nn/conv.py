"""2-D convolution over NCHW input, with an optional fused ReLU epilogue."""
from __future__ import annotations

from .. import init as initializers
from ..backend import kernel
from ._util import array_module, check_grad, check_input, pair
from .module import Module


class Conv2d(Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True,
                 init="he_normal", relu: bool = False):
        super().__init__()
        where = f"Conv2d(in_channels={in_channels}, out_channels={out_channels})"
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{where}: {name} must be a positive int, got {v!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = pair("kernel_size", kernel_size, where, 1)
        self.stride = pair("stride", stride, where, 1)
        self.padding = pair("padding", padding, where, 0)
        self.relu = bool(relu)
        self.has_bias = bias
        self.weight = self.add_param("weight", (out_channels, in_channels, *self.kernel_size), initializers.get(init))
        self.bias = self.add_param("bias", (out_channels,), initializers.zeros(), decay=False) if bias else None
        self._zero_bias = None

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.has_bias}, relu={self.relu}")

    def _geometry(self):
        return (*self.stride, *self.padding)

    def _b(self, x):
        if self.bias is not None:
            return self.bias.data
        if self._zero_bias is None or self._zero_bias.dtype != x.dtype:
            self._zero_bias = array_module(x).zeros(self.out_channels, x.dtype)
        return self._zero_bias

    def forward(self, x):
        where = f"Conv2d(in_channels={self.in_channels})"
        x = check_input(where, x, f"(N, {self.in_channels}, H, W)", 4, {1: self.in_channels})
        n, _, h, w = x.shape
        (r, s), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        p, q = (h + 2 * ph - r) // sh + 1, (w + 2 * pw - s) // sw + 1
        if p < 1 or q < 1:
            raise ValueError(f"{where}: input {tuple(x.shape)} is too small for kernel {self.kernel_size} with "
                             f"padding {self.padding}; expected H + 2*padding >= {r} and W + 2*padding >= {s}")
        y = array_module(x).empty((n, self.out_channels, p, q), x.dtype)
        kernel("conv2d_fwd", like=x)(x, self.weight.data, self._b(x), y, sh, sw, ph, pw, self.relu)
        self.cache = (x, y if self.relu else None)
        return y

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError("Conv2d.backward: backward called before forward")
        x, y = self.cache
        n, _, h, w = x.shape
        (r, s), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        shape = (n, self.out_channels, (h + 2 * ph - r) // sh + 1, (w + 2 * pw - s) // sw + 1)
        dy = check_grad("Conv2d.backward", x, dy, shape, x.dtype)
        xp = array_module(dy)
        if y is not None:
            # the fused ReLU's gradient: y > 0 exactly where the pre-activation was > 0
            masked = xp.empty_like(dy)
            kernel("relu_bwd", like=dy)(y, dy, masked)
            dy = masked
        dx = xp.empty_like(x)
        kernel("conv2d_bwd_data", like=dy)(dy, self.weight.data, dx, sh, sw, ph, pw)
        db = self.bias.grad if self.bias is not None else xp.zeros(self.out_channels, dy.dtype)
        kernel("conv2d_bwd_weight", like=dy)(x, dy, self.weight.grad, db, sh, sw, ph, pw)
        return dx
