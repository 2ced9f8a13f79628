"""The optimizers, each one fused kernel call per parameter group (formulas: docs/KERNELS.md).
`weight_decay` is the L2 coefficient (penalty (wd/2)|p|^2 added to the gradient) and `l1` the L1
coefficient (both: elastic net), except in AdamW where weight_decay is decoupled.

PyTorch's argument names are accepted beside ours (SGD(momentum=, dampening=, nesterov=),
Adam(betas=, amsgrad=), RMSProp(alpha=, momentum=), AdaGrad(lr_decay=, initial_accumulator_value=)),
with PyTorch's meaning and default; giving both names of one hyperparameter is an error."""
from __future__ import annotations

from .base import Optimizer, check_range

_UNIT = (0.0, 1.0, False, True)        # [0, 1)
_CLOSED_UNIT = (0.0, 1.0, False, False)  # [0, 1]
_POSITIVE = (0.0, None, True, True)    # (0, inf)
_NONNEGATIVE = (0.0, None, False, True)  # [0, inf)


def _one_of(owner: str, ours: str, ours_value, theirs: str, theirs_value, default):
    """The value of a hyperparameter we and PyTorch name differently (both given: an error)."""
    if ours_value is not None and theirs_value is not None:
        raise TypeError(f"{owner}: got both {ours}={ours_value!r} and {theirs}={theirs_value!r} (PyTorch's name "
                        f"for the same hyperparameter); give one")
    if ours_value is not None:
        return ours_value
    return default if theirs_value is None else theirs_value


class _Velocity(Optimizer):
    """Shared by optimizers whose velocity buffer exists only when built with momentum > 0: a
    group may then set its momentum to 0, but cannot ask for momentum the buffer does not hold."""

    _mu = "momentum"  # the name of the momentum coefficient

    def _validate(self, h: dict, where: str = "") -> dict:
        out = super()._validate(h, where)
        velocity = self.state_names and self.state_names[-1] in ("velocity", "momentum_buffer")
        if out.get(self._mu, 0.0) > 0 and not velocity:
            owner = type(self).__name__ + (f"[{where}]" if where else "")
            raise ValueError(f"{owner}({self._mu}): expected 0 for an optimizer built without momentum (it has no "
                             f"velocity buffer), got {out[self._mu]!r}; build it with {self._mu} > 0 instead")
        return out


class SGD(_Velocity):
    """p -= lr g'. With momentum (torch.optim.SGD's names and defaults): v = momentum v +
    (1 - dampening) g', p -= lr v, or with nesterov=True p -= lr (g' + momentum v); the first step
    starts the velocity at g' undampened, as torch.optim.SGD does."""

    op = "sgd_step"
    HYPER = {"momentum": _UNIT, "dampening": _CLOSED_UNIT}
    nesterov = False

    def __init__(self, arena, lr: float, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                 **kw):
        mu = check_range(type(self).__name__, self._mu, momentum, *_UNIT)
        self._set_velocity(mu, nesterov, dampening)
        super().__init__(arena, lr, **{self._mu: mu}, dampening=dampening, **kw)

    def _set_velocity(self, mu, nesterov: bool, dampening) -> None:
        """Pick the kernel and the state: a velocity buffer when built with momentum (or as Momentum)."""
        velocity = mu is None or mu > 0
        self.nesterov = bool(nesterov)
        if self.nesterov and (not velocity or dampening != 0):
            raise ValueError(f"{type(self).__name__}(nesterov=True): expected {self._mu} > 0 and dampening = 0 (as "
                             f"torch.optim.SGD), got {self._mu}={mu!r}, dampening={dampening!r}")
        self.state_names = ("velocity",) if velocity else ()
        self.op = ("nesterov_step" if self.nesterov else "momentum_step") if velocity else "sgd_step"
        self.options = {"nesterov": self.nesterov}

    def _validate(self, h: dict, where: str = "") -> dict:
        out = super()._validate(h, where)
        if self.nesterov and out.get("dampening", 0.0) != 0.0:
            raise ValueError(f"{type(self).__name__}(dampening): expected 0 with Nesterov momentum, "
                             f"got {out['dampening']!r}")
        return out

    def kernel_args(self, h):
        if not self.state_names:
            return h["lr"], h["weight_decay"], h["l1"]
        # the first step sets v = g' (torch.optim.SGD), later ones scale g' by 1 - dampening
        dampening = 0.0 if self.step_count == 1 else h["dampening"]
        return h["lr"], h[self._mu], dampening, h["weight_decay"], h["l1"]


class Momentum(SGD):
    """Heavy-ball momentum (Polyak 1964): v = mu v + (1 - dampening) g'; p -= lr v. The same
    update as SGD(momentum=mu), under our name and default (mu = 0.9)."""

    HYPER = {"mu": _UNIT, "dampening": _CLOSED_UNIT}
    _mu = "mu"
    _nesterov = False

    def __init__(self, arena, lr: float, mu: float = 0.9, dampening: float = 0.0, **kw):
        self._set_velocity(None, self._nesterov, dampening)
        Optimizer.__init__(self, arena, lr, mu=mu, dampening=dampening, **kw)


class Nesterov(Momentum):
    """Nesterov momentum in the form of Sutskever et al. 2013 (as torch.optim.SGD(nesterov=True)):
    v = mu v + g'; p -= lr (g' + mu v)."""

    _nesterov = True


class AdaGrad(Optimizer):
    """Duchi, Hazan & Singer 2011: h += g'^2; p -= lr_t g' / (sqrt(h) + eps), with PyTorch's
    lr_t = lr / (1 + (t - 1) lr_decay) (folded on the host) and h starting at
    initial_accumulator_value. Our eps default (1e-8) is PyTorch's 1e-10 times 100."""

    op = "adagrad_step"
    state_names = ("sum_sq",)
    HYPER = {"eps": _POSITIVE, "lr_decay": _NONNEGATIVE}

    def __init__(self, arena, lr: float, eps: float = 1e-8, lr_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, **kw):
        init = check_range("AdaGrad", "initial_accumulator_value", initial_accumulator_value)
        super().__init__(arena, lr, eps=eps, lr_decay=lr_decay, **kw)
        self.state["sum_sq"][...] = init

    def kernel_args(self, h):
        lr = h["lr"] / (1.0 + (self.step_count - 1) * h["lr_decay"])
        return lr, h["eps"], h["weight_decay"], h["l1"]


class RMSProp(_Velocity):
    """Tieleman & Hinton 2012 (lecture 6.5); centered=True divides by the running standard
    deviation of the gradient instead of its RMS (Graves 2013, eq. 38-40); momentum > 0 (PyTorch's)
    puts the normalised step through a velocity b = momentum b + g' / (sqrt(s) + eps), p -= lr b.
    `alpha` is PyTorch's name for rho."""

    HYPER = {"rho": _UNIT, "eps": _POSITIVE, "momentum": _UNIT}

    def __init__(self, arena, lr: float, rho: float | None = None, eps: float = 1e-8, centered: bool = False,
                 momentum: float = 0.0, alpha: float | None = None, **kw):
        rho = _one_of("RMSProp", "rho", rho, "alpha", alpha, 0.99)
        mu = check_range("RMSProp", "momentum", momentum, *_UNIT)
        self.centered = bool(centered)
        self.op = "rmsprop_" + ("centered_" if self.centered else "") + ("momentum_" if mu > 0 else "") + "step"
        self.state_names = ("sq_avg",) + (("grad_avg",) if self.centered else ()) + \
            (("momentum_buffer",) if mu > 0 else ())
        self.options = {"centered": self.centered}
        super().__init__(arena, lr, rho=rho, eps=eps, momentum=mu, **kw)

    def kernel_args(self, h):
        mu = (h["momentum"],) if "momentum_buffer" in self.state_names else ()
        return (h["lr"], h["rho"], h["eps"], *mu, h["weight_decay"], h["l1"])


class Adam(Optimizer):
    """Kingma & Ba 2015 with bias correction; weight_decay is the coupled L2 penalty (it passes
    through the adaptive normalisation, unlike AdamW's). `betas=(beta1, beta2)` is PyTorch's
    spelling; amsgrad=True divides by the running maximum of v (Reddi, Kale & Kumar 2018)."""

    HYPER = {"beta1": _UNIT, "beta2": _UNIT, "eps": _POSITIVE}
    decoupled = False

    def __init__(self, arena, lr: float = 1e-3, beta1: float | None = None, beta2: float | None = None,
                 eps: float = 1e-8, betas=None, amsgrad: bool = False, **kw):
        name = type(self).__name__
        if betas is not None:
            if beta1 is not None or beta2 is not None:
                raise TypeError(f"{name}: got both betas={betas!r} and beta1/beta2 (the same hyperparameters); "
                                "give one")
            if not isinstance(betas, (tuple, list)) or len(betas) != 2:
                raise ValueError(f"{name}(betas): expected a pair (beta1, beta2), got {betas!r}")
            beta1, beta2 = betas
        self.amsgrad = bool(amsgrad)
        self.op = "adam_amsgrad_step" if self.amsgrad else "adam_step"
        self.state_names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())
        self.options = {"amsgrad": self.amsgrad}
        super().__init__(arena, lr, beta1=0.9 if beta1 is None else beta1, beta2=0.999 if beta2 is None else beta2,
                         eps=eps, **kw)

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
