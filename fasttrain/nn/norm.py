"""Batch normalization layers. Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network
Training by Reducing Internal Covariate Shift", ICML 2015.

Training normalizes with the batch's statistics (biased variance) and updates the running
statistics like torch.nn.BatchNorm: r = (1 - momentum) * r + momentum * batch, with the
*unbiased* batch variance. Evaluation normalizes with the running statistics, so the layer is a
fixed per-channel affine map and its backward is that map's.

gamma (`weight`) and beta (`bias`) are arena parameters without weight decay; running_mean and
running_var are float32 buffers in `self.buffers`, where checkpoints and distributed code find them.

use_running_stats=True makes training-mode forward normalize with the running statistics and
leave them alone, as evaluation does: a frozen layer of a fine-tuned network (transfer.freeze_except)
then stays the function it was trained to be instead of following the new data's batch statistics.

relu=True fuses a following ReLU: y = max(0, BN(x)) in the normalize pass, and the backward masks
dy with the saved output (y > 0) as it reads it, so the pair costs the passes of BN alone. The
result and the gradients equal BatchNorm followed by nn.ReLU().

forward_add / backward_add fuse a ResNet block's tail, y = max(0, BN(x) + shortcut): the add and
the ReLU ride in the normalize pass, and the backward's dx pass also writes the gradient of the
shortcut (dy masked by y > 0), so the block's add and ReLU (two passes forward, two backward, plus
their allocations) cost one extra stream inside BN's passes. nn.Residual uses them when its body
ends with a batchnorm and its `post` is a ReLU (or absent).

With FUSE_BWD_SUMS on the blocked layout in training, the backward's two per-channel sums (of g =
dy after the fused ReLU's mask, and of g * (x - mean)) come, where they can, from the epilogue of
the convolution data gradient that writes dy (GradSums), as the forward's batch statistics come
from the producing convolution's epilogue: the backward then runs its dx pass only. Off by default
(measured no faster here, see FUSE_BWD_SUMS).
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from .. import init as initializers
from ._util import array_module as _array_module
from ._util import check_params, params_match
from .layout import Blocked, cpp, empty, lanes_of, with_halo
from .module import Module


#: whether blocked training batchnorms ask the convolution reading their output for their backward
#: sums (GradSums). Off: on this machine kind it did not pay (bench/dev/bn_sums_step.py, 1 thread,
#: CPU time, interleaved, loaded machine: resnet8 b128 1.002-1.025x the unfused step, resnet20
#: 0.985-1.005x): the epilogue's read of x inside the compute-bound data gradient costs about what
#: the batchnorm's own pass over x and dy did (docs/KERNELS.md). True turns it on (tests, A/B).
FUSE_BWD_SUMS = False


class GradSums:
    """A training batchnorm's request, on its output (Blocked.bn_request), for its backward sums
    from the epilogue of the data gradient of a convolution that reads that output: what the
    epilogue needs (the batchnorm's input x, mean, invstd, gamma, and beta for the fused ReLU's mask
    x * a + b > 0, None without one). The convolution attaches (request, sums) to the dx it returns
    (Blocked.bn_sums) only when its epilogue wrote the output's whole gradient (Module.dx_complete);
    the batchnorm uses them only when the request is its current forward's (the same x and mean)."""

    __slots__ = ("x", "mean", "invstd", "gamma", "beta")

    def __init__(self, x, mean, invstd, gamma, beta):
        self.x, self.mean, self.invstd, self.gamma, self.beta = x, mean, invstd, gamma, beta


def update_running(rmean, rvar, mean, invstd, eps: float, momentum: float, unbias: float, xp=np):
    """The running statistics' update in place, from the batch's mean and invstd = 1/sqrt(var + eps):
    the spec fasttrain._C.batchnorm_update_running rounds exactly as (see _BatchNorm._update_running)."""
    var = xp.square(invstd, dtype=np.float64)
    xp.divide(1.0, var, out=var)
    var -= eps
    xp.maximum(var, 0.0, out=var)
    var *= unbias
    var *= momentum
    var += (1.0 - momentum) * rvar
    rvar[...] = var
    rmean *= 1.0 - momentum
    rmean += momentum * mean


class _BatchNorm(Module):
    cache_attrs = ("cache", "_relu_out", "_mask_beta")
    _ndims: tuple = ()          # accepted input ranks
    _layout: str = ""           # for error messages

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, relu: bool = False):
        super().__init__()
        if not isinstance(num_features, (int, np.integer)) or num_features < 1:
            raise ValueError(f"{type(self).__name__}(num_features): expected a positive int, got {num_features!r}")
        if not eps > 0:
            raise ValueError(f"{type(self).__name__}(eps): expected > 0, got {eps!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{type(self).__name__}(momentum): expected a value in [0, 1], got {momentum!r}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = float(momentum)
        if not isinstance(relu, (bool, np.bool_)):
            raise TypeError(f"{type(self).__name__}(relu): expected a bool, got {relu!r}")
        self.relu = bool(relu)
        self.use_running_stats = False
        self._relu_out = None
        self._mask_beta = None
        self.weight = self.add_param("weight", (self.num_features,), initializers.ones(), decay=False)
        self.bias = self.add_param("bias", (self.num_features,), initializers.zeros(), decay=False)
        self.buffers = {"running_mean": np.zeros(self.num_features, np.float32),
                        "running_var": np.ones(self.num_features, np.float32)}

    @property
    def running_mean(self):
        return self.buffers["running_mean"]

    @property
    def running_var(self):
        return self.buffers["running_var"]

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}" + (", relu=True" if self.relu else "")
                + (", use_running_stats=True" if self.use_running_stats else ""))

    def _where(self) -> str:
        return f"{type(self).__name__}(num_features={self.num_features})"

    def _check_input(self, x):
        if getattr(x, "ndim", None) not in self._ndims or x.shape[1] != self.num_features:
            raise ValueError(f"{self._where()}: expected input {self._layout.format(C=self.num_features)}, "
                             f"got {getattr(x, 'shape', type(x).__name__)}")
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"{self._where()}: expected a float32 or float64 input, got {x.dtype}")
        check_params(self._where(), self, x)

    def _buffers_on(self, xp):
        # Buffers follow the input's device (moved once, on the first GPU forward).
        rmean, rvar = self.buffers["running_mean"], self.buffers["running_var"]
        if xp is np and type(rmean) is np.ndarray and type(rvar) is np.ndarray:   # the usual case, per step
            return rmean, rvar
        for k, v in self.buffers.items():
            if _array_module(v) is not xp:
                self.buffers[k] = xp.asarray(v)
        return self.buffers["running_mean"], self.buffers["running_var"]

    def takes_blocked(self, x) -> bool:
        return True

    @property
    def wants_stats(self):
        return self.training and not self.use_running_stats

    def forward(self, x):
        return self._forward(x, self.relu, None)

    def forward_add(self, x, residual, relu: bool):
        """y = BN(x) + residual, then max(0, .) when relu (and always when the layer has relu=True),
        in BN's normalize pass; pair with backward_add."""
        if getattr(residual, "shape", None) != x.shape or residual.dtype != x.dtype:
            raise ValueError(f"{self._where()}: expected a residual {x.shape} {x.dtype} (like the input), got "
                             f"{getattr(residual, 'shape', type(residual).__name__)} {getattr(residual, 'dtype', '')}")
        if isinstance(residual, Blocked) != isinstance(x, Blocked):
            raise ValueError(f"{self._where()}: expected the residual in the input's layout")
        if not isinstance(x, Blocked):
            residual = _array_module(residual).ascontiguousarray(residual)
        return self._forward(x, self.relu or bool(relu), residual)

    def _forward(self, x, relu, residual):
        blocked = isinstance(x, Blocked)   # the layout that flows (fasttrain/nn/layout.py)
        if blocked and self.training and not self.use_running_stats:
            return self._forward_blocked_train(x, relu, residual)
        if blocked:
            self._check_blocked(x)
            xp = np
        else:
            self._check_input(x)
            xp = _array_module(x)
            x = xp.ascontiguousarray(x)
        n, c = x.shape[0], x.shape[1]
        m = math.prod(x.shape) // c           # N*S values per channel
        gamma, beta = self.weight.data, self.bias.data
        y = empty(n, c, *x.shape[2:], self.out_halo) if blocked else xp.empty_like(x)
        kw = {} if residual is None else {"residual": residual.data if blocked else residual}
        if blocked:
            kw.update(halo_x=x.halo, halo_y=y.halo, halo_res=0 if residual is None else residual.halo)
        if self.training and not self.use_running_stats:
            self._check_count(x, m)
            mean = xp.empty(c, x.dtype)
            invstd = xp.empty(c, x.dtype)
            backend.kernel("batchnorm_fwd_train", like=x)(x, gamma, beta, self.eps, y, mean, invstd, relu, **kw)
            self._update_running(mean, invstd, m, xp)
            self.cache = (x, mean, invstd, True)
        else:
            rmean, rvar = self._buffers_on(xp)
            rm = rmean.astype(x.dtype, copy=False)
            rv = rvar.astype(x.dtype, copy=False)
            if blocked:
                cpp().batchnorm_blocked_fwd_eval(x.data, gamma, beta, rm, rv, self.eps, y.data, relu, **kw)
            else:
                backend.kernel("batchnorm_fwd_eval", like=x)(x, gamma, beta, rm, rv, self.eps, y, relu, **kw)
            self.cache = (x, rm, 1.0 / xp.sqrt(rv + self.eps), False)
        self._relu_out = y if relu else None   # the fused ReLU's gradient mask (y > 0)
        # the blocked backward recomputes that mask from x without a residual (no pass over y); beta
        # copied, as an optimizer step may come before a pipelined backward
        self._mask_beta = beta.copy() if relu and blocked and residual is None else None
        return y

    def _update_running(self, mean, invstd, m, xp):
        """The running statistics after a training batch of m values per channel. The kernel returns
        invstd = 1/sqrt(var + eps); recover the biased variance from it (one pass fewer than
        recomputing), then make it unbiased with M/(M-1) as torch does. In place, in the order (and
        so with the rounding) of
          rmean = (1 - mom) * rmean + mom * mean
          rvar = (1 - mom) * rvar + mom * (max(1 / invstd^2 - eps, 0) * M / (M - 1))
        with fewer temporaries: per layer and step, these tiny arrays' fixed costs add up."""
        rmean, rvar = self._buffers_on(xp)
        C = cpp() if xp is np else None
        if (C is not None and mean.dtype == rmean.dtype == rvar.dtype == np.float32
                and rmean.flags.c_contiguous and rvar.flags.c_contiguous):
            # the same operations in one compiled call (a dozen NumPy calls' fixed costs per layer)
            C.batchnorm_update_running(rmean, rvar, mean, invstd, self.eps, self.momentum, m / (m - 1))
        else:
            update_running(rmean, rvar, mean, invstd, self.eps, self.momentum, m / (m - 1), xp)

    def _check_count(self, x, m):
        if m <= 1:
            raise ValueError(f"{self._where()}: training needs more than one value per channel to "
                             f"compute a variance, got input {x.shape} (N*S = {m}); use a larger batch "
                             "or call .eval()")

    def _forward_blocked_train(self, x, relu, residual):
        """_forward's training case on the blocked layout, the one every step of a flowing model
        runs (21 times a ResNet-20 step): the same calls with no per-call generality, since the
        Python between a step's kernels runs with caches the kernels have just flushed."""
        self._check_blocked(x)
        n, c, h, w = x.shape
        m = n * h * w
        self._check_count(x, m)
        beta = self.bias.data
        y = empty(n, c, h, w, self.out_halo)
        mean = np.empty(c, np.float32)
        invstd = np.empty(c, np.float32)
        C = cpp()
        C.batchnorm_blocked_fwd_train(x.data, self.weight.data, beta, self.eps, y.data, mean, invstd, relu,
                                      stats=x.stats, residual=None if residual is None else residual.data,
                                      halo_x=x.halo, halo_y=y.halo, halo_res=0 if residual is None else residual.halo)
        self._update_running(mean, invstd, m, np)
        self.cache = (x, mean, invstd, True)
        self._relu_out = y if relu else None
        self._mask_beta = beta.copy() if relu and residual is None else None
        if FUSE_BWD_SUMS and residual is None:   # (with a residual the mask needs y: not asked)
            y.bn_request = GradSums(x, mean, invstd, self.weight.data, self._mask_beta)
        return y

    def _check_blocked(self, x):
        if x.channels != self.num_features:
            raise ValueError(f"{self._where()}: expected input {self._layout.format(C=self.num_features)}, "
                             f"got a blocked {x.shape}")
        # the message only when a check fails (this runs for every layer and step)
        if not params_match(self, x.dtype):
            check_params(self._where(), self, x.data)

    def backward(self, dy):
        return self._backward(dy, False)[0]

    def backward_add(self, dy):
        """(dx, dresidual) after forward_add: the gradients of BN's input and of the residual."""
        return self._backward(dy, True)

    def _backward(self, dy, with_residual: bool):
        if self.cache is None:
            raise RuntimeError(f"{self._where()}: backward called before forward")
        x, mean, invstd, trained = self.cache
        y = self._relu_out
        blocked = isinstance(x, Blocked)
        if dy.shape != x.shape or dy.dtype != x.dtype or isinstance(dy, Blocked) != blocked:
            raise ValueError(f"{self._where()}: expected dy {x.shape} {x.dtype} (the forward output), "
                             f"got {dy.shape} {dy.dtype}" + (" in the other layout" if dy.shape == x.shape else ""))
        if blocked:
            return self._backward_blocked(x, with_halo(dy, 0), y, mean, invstd, trained, with_residual)
        xp = _array_module(dy)
        dy = xp.ascontiguousarray(dy)
        gamma = self.weight.data
        if trained:
            dx = xp.empty_like(x)
            dres = xp.empty_like(x) if with_residual else None
            kw = {"dres": dres} if with_residual else {}
            backend.kernel("batchnorm_bwd", like=x)(x, dy, gamma, mean, invstd, dx, self.weight.grad, self.bias.grad,
                                                    y, **kw)
            return dx, dres
        # Eval: y = gamma*invstd*(x - mean) + beta with constant mean/invstd, an affine map.
        if y is not None:
            dy = dy * (y > 0)           # the fused ReLU's gradient
        c = self.num_features
        xs, dys = x.reshape(x.shape[0], c, -1), dy.reshape(x.shape[0], c, -1)
        xhat = (xs - mean.reshape(1, c, 1)) * invstd.reshape(1, c, 1)
        self.weight.grad += (dys * xhat).sum(axis=(0, 2))
        self.bias.grad += dys.sum(axis=(0, 2))
        return dy * (gamma * invstd).reshape((1, c) + (1,) * (x.ndim - 2)), (dy if with_residual else None)

    def _backward_blocked(self, x, dy, y, mean, invstd, trained, with_residual):
        n, c, h, w = x.shape
        if trained:   # dx written with the halo its consumer reads (a convolution's backward)
            dx = empty(n, c, h, w, self.dx_halo)
            dres = empty(n, c, h, w) if with_residual else None
            from_x = self._mask_beta is not None
            # the sums from the epilogue of the convolution data gradient that wrote dy, if it did,
            # for this forward (else the kernel forms them)
            got = dy.bn_sums
            sums = got[1] if got is not None and got[0].x is x and got[0].mean is mean and not with_residual else None
            cpp().batchnorm_blocked_bwd(x.data, dy.data, self.weight.data, mean, invstd, dx.data, self.weight.grad,
                                        self.bias.grad, None if y is None or from_x else y.data,
                                        dres=None if dres is None else dres.data, halo_x=x.halo,
                                        halo_y=0 if y is None else y.halo, halo_dx=dx.halo, beta=self._mask_beta,
                                        sums=sums)
            return dx, dres
        # Eval (the affine map above) on the interiors, per-channel vectors spread over the lanes
        # (pad lanes: gamma 0, so their gradient stays 0)
        g = dy.data
        if y is not None:
            g = g * (y.interior() > 0)
        lanes = lambda v: lanes_of(v, x.data.shape[1])   # noqa: E731
        xhat = (x.interior() - lanes(mean)) * lanes(invstd)
        self.weight.grad += (g * xhat).sum(axis=(0, 2, 3)).reshape(-1)[:c]
        self.bias.grad += g.sum(axis=(0, 2, 3)).reshape(-1)[:c]
        dx = dy.like(np.ascontiguousarray(g * lanes(self.weight.data * invstd)))
        return dx, (dy.like(np.ascontiguousarray(g)) if with_residual else None)


class BatchNorm2d(_BatchNorm):
    """Batch normalization over (N, C, H, W): statistics per channel over N*H*W."""

    _ndims = (4,)
    _layout = "(N, {C}, H, W)"


class BatchNorm1d(_BatchNorm):
    """Batch normalization over (N, C) (or (N, C, L)): statistics per channel over N (or N*L)."""

    _ndims = (2, 3)
    _layout = "(N, {C}) or (N, {C}, L)"
