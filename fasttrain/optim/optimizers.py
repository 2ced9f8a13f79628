"""The optimizers of the lecture notes, each one fused kernel per group (docs/KERNELS.md)."""
from __future__ import annotations

from .base import Optimizer, _check


class SGD(Optimizer):
    op = "sgd_step"

    def kernel_args(self, h):
        return h["lr"], h["weight_decay"], h["l1"]


class Momentum(Optimizer):
    """Heavy-ball momentum: v = mu v + g; p -= lr v."""

    op = "momentum_step"
    state_names = ("velocity",)

    def __init__(self, arena, lr, mu: float = 0.9, **kw):
        super().__init__(arena, lr, mu=_check("mu", mu, 0.0, 1.0), **kw)

    def kernel_args(self, h):
        return h["lr"], h["mu"], h["weight_decay"], h["l1"]


class Nesterov(Momentum):
    """Nesterov momentum in the look-ahead form used by Sutskever et al. 2013 / torch."""

    op = "nesterov_step"


class AdaGrad(Optimizer):
    op = "adagrad_step"
    state_names = ("sum_sq",)

    def __init__(self, arena, lr, eps: float = 1e-8, **kw):
        super().__init__(arena, lr, eps=_check("eps", eps, 0.0, lo_open=True), **kw)

    def kernel_args(self, h):
        return h["lr"], h["eps"], h["weight_decay"], h["l1"]


class RMSProp(Optimizer):
    """Tieleman & Hinton 2012; centered=True divides by the running variance (Graves 2013)."""

    state_names = ("sq_avg",)

    def __init__(self, arena, lr, rho: float = 0.99, eps: float = 1e-8, centered: bool = False, **kw):
        if centered:
            self.state_names = ("sq_avg", "grad_avg")
        super().__init__(arena, lr, rho=_check("rho", rho, 0.0, 1.0), eps=_check("eps", eps, 0.0, lo_open=True), **kw)
        self.op = "rmsprop_centered_step" if centered else "rmsprop_step"
        self.centered = centered

    def kernel_args(self, h):
        return h["lr"], h["rho"], h["eps"], h["weight_decay"], h["l1"]


class Adam(Optimizer):
    """Kingma & Ba 2015 with bias correction; weight_decay is the coupled L2 penalty."""

    op = "adam_step"
    state_names = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, arena, lr=1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, **kw):
        super().__init__(arena, lr, beta1=_check("beta1", beta1, 0.0, 1.0), beta2=_check("beta2", beta2, 0.0, 1.0),
                         eps=_check("eps", eps, 0.0, lo_open=True), **kw)

    def kernel_args(self, h):
        t = self.step_count
        # bias corrections once per step, on the host
        bc1, bc2 = 1.0 - h["beta1"] ** t, 1.0 - h["beta2"] ** t
        wd = h["weight_decay"]
        l2, decoupled = (0.0, wd) if self.decoupled else (wd, 0.0)
        return h["lr"], h["beta1"], h["beta2"], h["eps"], bc1, bc2, l2, h["l1"], decoupled


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019): p *= 1 - lr wd each step."""

    decoupled = True

    def __init__(self, arena, lr=1e-3, weight_decay: float = 1e-2, **kw):
        super().__init__(arena, lr, weight_decay=weight_decay, **kw)
