"""DropConnect (Wan, Zeiler, Zhang, LeCun, Fergus, "Regularization of Neural Networks using
DropConnect", ICML 2013): drop individual *weights* instead of activations.

Training: y = x (M * W / (1 - p))^T + b with a Bernoulli keep-mask M over the weight matrix.
The mask is the dropout family's Philox-4x32-10 mask keyed by (seed, step, layer) over the
weight's flat index (docs/KERNELS.md), applied by the fused `dropout_fwd` kernel, and
regenerated in backward by `dropout_bwd`: the layer never stores a mask.

Two deliberate simplifications of the paper: one mask per step shared by the whole batch (the
paper draws one per example, which costs a weight-sized mask per example), and inference with
the mean weight W (inverted scaling makes E[M W / (1-p)] = W) instead of the paper's Gaussian
moment-matching sampler.
"""
from __future__ import annotations

from ..backend import kernel
from ._util import array_module, check_grad, check_input, check_params
from .dropout import check_layer_id, layer_key
from .linear import Linear


class DropConnectLinear(Linear):
    stochastic = True

    def __init__(self, in_features: int, out_features: int, p: float = 0.5, bias: bool = True,
                 init="he_normal", seed: int = 0, layer_id: int | None = None):
        super().__init__(in_features, out_features, bias=bias, init=init)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"DropConnectLinear(p): expected a probability in [0, 1), got {p!r}")
        if not isinstance(seed, int) or not 0 <= seed < 2 ** 64:
            raise ValueError(f"DropConnectLinear(seed): expected an int in [0, 2**64), got {seed!r}")
        self.p, self.seed, self.layer_id = float(p), seed, check_layer_id("DropConnectLinear", layer_id)

    def extra_repr(self):
        return super().extra_repr() + f", p={self.p}, seed={self.seed}, layer_id={self.layer_id}"

    def _key(self):
        return self.p, self.seed, self.draw_step(), layer_key(self)

    def masked_weight(self, key):
        """M * W / (1 - p) for the mask keyed by (p, seed, step, layer)."""
        w = self.weight.data
        out = array_module(w).empty_like(w)
        kernel("dropout_fwd", like=w)(w, out, *key)
        return out

    def forward(self, x):
        where = f"DropConnectLinear(in_features={self.in_features})"
        x = check_input(where, x, f"(N, {self.in_features})", 2, {1: self.in_features})
        check_params(where, self, x)
        # keep the key, not the mask: a set_step between forward and backward cannot desynchronize them
        key = self._key() if self.training and self.p > 0 else None
        w = self.masked_weight(key) if key is not None else self.weight.data
        y = array_module(x).empty((x.shape[0], self.out_features), x.dtype)
        kernel("linear_fwd", like=x)(x, w, self._b(x), y)
        self.cache = (x, key)
        return y

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError("DropConnectLinear.backward: backward called before forward")
        x, key = self.cache
        dy = check_grad("DropConnectLinear.backward", x, dy, (x.shape[0], self.out_features), x.dtype)
        xp = array_module(dy)
        dx = xp.empty_like(x)
        db = self.bias.grad if self.bias is not None else xp.zeros(self.out_features, dy.dtype)
        if key is None:
            kernel("linear_bwd", like=dy)(x, self.weight.data, dy, dx, self.weight.grad, db)
            return dx
        # dL/dW = M / (1 - p) * dL/dW_eff: the gradient w.r.t. the masked weight, masked the same way
        dw_eff = xp.zeros_like(self.weight.data)
        kernel("linear_bwd", like=dy)(x, self.masked_weight(key), dy, dx, dw_eff, db)
        dw = xp.empty_like(dw_eff)
        kernel("dropout_bwd", like=dw_eff)(dw_eff, dw, *key)
        self.weight.grad += dw
        return dx
