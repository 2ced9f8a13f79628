"""Batch normalization kernels (reference). Ioffe & Szegedy, "Batch Normalization", ICML 2015.

x is viewed as (N, C, S) with S = H*W for 2d input and S = 1 for (N, C); statistics are per
channel over the M = N*S values of that channel. See docs/KERNELS.md for the contract.
"""
import numpy as np

OPS = ["batchnorm_fwd_train", "batchnorm_fwd_eval", "batchnorm_bwd"]


def _ncs(a):
    # (N, C, ...) -> (N, C, S); a view for C-contiguous input, so writes through y/dx land.
    return a.reshape(a.shape[0], a.shape[1], -1)


def _per_channel(v):
    # (C,) -> (1, C, 1), to broadcast against (N, C, S)
    return v.reshape(1, -1, 1)


def _relu_inplace(y):
    # max(0, .) that keeps NaN, like relu_fwd_ref
    np.maximum(y, 0, out=y)


def _add_residual(y, residual):
    # the fused residual add of a ResNet block: y = bn(x) + residual, before the ReLU
    if residual is not None:
        y += residual


def batchnorm_fwd_train_ref(x, gamma, beta, eps, y, mean, invstd, relu=False, residual=None):
    # x, y: (N, C, ...); gamma, beta, mean, invstd: (C,); relu: y = max(0, bn(x)) (fused ReLU)
    # residual: (N, C, ...) or None; y = max(0, bn(x) + residual) (a ResNet block's add, fused)
    # Two passes (mean, then centered squares): the biased variance without cancellation. In
    # float64 whatever x's dtype, as the fast kernels accumulate: a float32 mean is off by up to
    # |mean| * eps32 / 2, which at |mean| / std = 1e4 would cost float32 input 10 eps in invstd.
    xs = _ncs(x)
    mu = xs.mean(axis=(0, 2), dtype=np.float64)
    d = xs - _per_channel(mu)
    inv = 1.0 / np.sqrt(np.square(d).mean(axis=(0, 2)) + eps)
    mean[...] = mu
    invstd[...] = inv
    _ncs(y)[...] = d * _per_channel(inv * gamma) + _per_channel(beta)
    _add_residual(y, residual)
    if relu:
        _relu_inplace(y)


def batchnorm_fwd_eval_ref(x, gamma, beta, running_mean, running_var, eps, y, relu=False, residual=None):
    # x, y: (N, C, ...); gamma, beta, running_mean, running_var: (C,); residual as in training
    scale = gamma / np.sqrt(running_var + eps)
    _ncs(y)[...] = (_ncs(x) - _per_channel(running_mean)) * _per_channel(scale) + _per_channel(beta)
    _add_residual(y, residual)
    if relu:
        _relu_inplace(y)


def batchnorm_bwd_ref(x, dy, gamma, mean, invstd, dx, dgamma, dbeta, y=None, dres=None):
    # x, dy, dx: (N, C, ...); gamma, mean, invstd, dgamma, dbeta: (C,)
    # y: the forward's output when it applied the fused ReLU (None otherwise); the ReLU's gradient
    # first: dy is zeroed where y <= 0, exactly as relu_bwd_ref would with the pre-activation.
    # dres: (N, C, ...) or None; receives the gradient reaching the sum bn(x) + residual (dy after
    # the ReLU's mask), i.e. the residual input's gradient, written in the same pass as dx.
    # Compact form of the chain rule through mean and variance (llm.c / cs231n):
    #   dx = gamma*invstd/M * (M*dy - sum(dy) - xhat*sum(dy*xhat)),  sums per channel.
    if y is not None:
        dy = dy * (y > 0)
    if dres is not None:
        dres[...] = dy
    xs, dys = _ncs(x), _ncs(dy)
    m = xs.shape[0] * xs.shape[2]
    xhat = (xs - _per_channel(mean)) * _per_channel(invstd)
    sum_dy = dys.sum(axis=(0, 2))
    sum_dy_xhat = (dys * xhat).sum(axis=(0, 2))
    _ncs(dx)[...] = _per_channel(gamma * invstd / m) * (
        m * dys - _per_channel(sum_dy) - xhat * _per_channel(sum_dy_xhat))
    dgamma += sum_dy_xhat
    dbeta += sum_dy
