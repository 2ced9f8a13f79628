"""The optimizers, each one fused kernel call per parameter group (formulas: docs/KERNELS.md).
`weight_decay` is the L2 coefficient (penalty (wd/2)|p|^2 added to the gradient) and `l1` the L1
coefficient (both: elastic net), except in AdamW where weight_decay is decoupled."""
from __future__ import annotations

from .base import Optimizer

_UNIT = (0.0, 1.0, False, True)        # [0, 1)
_POSITIVE = (0.0, None, True, True)    # (0, inf)


class SGD(Optimizer):
    """p -= lr * g'."""

    op = "sgd_step"

    def kernel_args(self, h):
        return h["lr"], h["weight_decay"], h["l1"]


class Momentum(Optimizer):
    """Heavy-ball momentum (Polyak 1964): v = mu v + g'; p -= lr v."""

    op = "momentum_step"
    state_names = ("velocity",)
    HYPER = {"mu": _UNIT}

    def __init__(self, arena, lr: float, mu: float = 0.9, **kw):
        super().__init__(arena, lr, mu=mu, **kw)

    def kernel_args(self, h):
        return h["lr"], h["mu"], h["weight_decay"], h["l1"]


class Nesterov(Momentum):
    """Nesterov momentum in the form of Sutskever et al. 2013 (as torch.optim.SGD(nesterov=True)):
    v = mu v + g'; p -= lr (g' + mu v)."""

    op = "nesterov_step"


class AdaGrad(Optimizer):
    """Duchi, Hazan & Singer 2011: h += g'^2; p -= lr g' / (sqrt(h) + eps)."""

    op = "adagrad_step"
    state_names = ("sum_sq",)
    HYPER = {"eps": _POSITIVE}

    def __init__(self, arena, lr: float, eps: float = 1e-8, **kw):
        super().__init__(arena, lr, eps=eps, **kw)

    def kernel_args(self, h):
        return h["lr"], h["eps"], h["weight_decay"], h["l1"]


class RMSProp(Optimizer):
    """Tieleman & Hinton 2012 (lecture 6.5); centered=True divides by the running standard
    deviation of the gradient instead of its RMS (Graves 2013, eq. 38-40)."""

    HYPER = {"rho": _UNIT, "eps": _POSITIVE}

    def __init__(self, arena, lr: float, rho: float = 0.99, eps: float = 1e-8, centered: bool = False, **kw):
        self.centered = bool(centered)
        self.op = "rmsprop_centered_step" if self.centered else "rmsprop_step"
        self.state_names = ("sq_avg", "grad_avg") if self.centered else ("sq_avg",)
        super().__init__(arena, lr, rho=rho, eps=eps, **kw)

    def kernel_args(self, h):
        return h["lr"], h["rho"], h["eps"], h["weight_decay"], h["l1"]


class Adam(Optimizer):
    """Kingma & Ba 2015 with bias correction; weight_decay is the coupled L2 penalty (it passes
    through the adaptive normalisation, unlike AdamW's)."""

    op = "adam_step"
    state_names = ("exp_avg", "exp_avg_sq")
    HYPER = {"beta1": _UNIT, "beta2": _UNIT, "eps": _POSITIVE}
    decoupled = False

    def __init__(self, arena, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, **kw):
        super().__init__(arena, lr, beta1=beta1, beta2=beta2, eps=eps, **kw)

    def kernel_args(self, h):
        # Bias corrections 1 - beta^t: computed on the host once per step (and group), so the
        # kernel stays one multiply-add pass (Kingma & Ba 2015, Algorithm 1).
        t = self.step_count
        bc1, bc2 = 1.0 - h["beta1"] ** t, 1.0 - h["beta2"] ** t
        wd = h["weight_decay"]
        l2, decoupled = (0.0, wd) if self.decoupled else (wd, 0.0)
        return h["lr"], h["beta1"], h["beta2"], h["eps"], bc1, bc2, l2, h["l1"], decoupled


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019): p *= 1 - lr wd each step,
    before the Adam update and outside its normalisation."""

    decoupled = True

    def __init__(self, arena, lr: float = 1e-3, weight_decay: float = 1e-2, **kw):
        super().__init__(arena, lr, weight_decay=weight_decay, **kw)
