"""Fully connected layer: y = x W^T + b, x: (N, in_features)."""
from __future__ import annotations

from .. import init as initializers
from ..backend import kernel
from ._util import array_module, check_grad, check_input, check_params
from .module import Module


class Linear(Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, init="he_normal"):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Linear({name}): expected a positive int, got {v!r}")
        self.in_features, self.out_features = in_features, out_features
        self.weight = self.add_param("weight", (out_features, in_features), initializers.get(init))
        self.has_bias = bias
        # without a bias the kernel still adds one: a zero vector kept on the module, not in the arena
        self.bias = self.add_param("bias", (out_features,), initializers.zeros(), decay=False) if bias else None
        self._zero_bias = None

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.has_bias}"

    def _b(self, x):
        if self.bias is not None:
            return self.bias.data
        if self._zero_bias is None or self._zero_bias.dtype != x.dtype:
            self._zero_bias = array_module(x).zeros(self.out_features, x.dtype)
        return self._zero_bias

    def forward(self, x):
        where = f"Linear(in_features={self.in_features})"
        x = check_input(where, x, f"(N, {self.in_features})", 2, {1: self.in_features})
        check_params(where, self, x)
        y = array_module(x).empty((x.shape[0], self.out_features), x.dtype)
        kernel("linear_fwd", like=x)(x, self.weight.data, self._b(x), y)
        self.cache = x
        return y

    def backward(self, dy):
        x = self.cache
        if x is None:
            raise RuntimeError("Linear.backward: backward called before forward")
        dy = check_grad("Linear.backward", x, dy, (x.shape[0], self.out_features), x.dtype)
        xp = array_module(dy)
        dx = xp.empty_like(x)
        db = self.bias.grad if self.bias is not None else xp.zeros(self.out_features, dy.dtype)
        kernel("linear_bwd", like=dy)(x, self.weight.data, dy, dx, self.weight.grad, db)
        return dx
