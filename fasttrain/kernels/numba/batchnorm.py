"""Batch normalization with Numba (docs/KERNELS.md): statistics in one pass (sums in float64),
normalize + affine in a second; backward in two passes. Parallel over channels."""
import math

import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True)
def _fwd_train(x, gamma, beta, eps, y, mean, invstd):
    n, c, s = x.shape
    m = n * s
    for ch in nb.prange(c):
        acc = 0.0
        acc2 = 0.0
        for i in range(n):
            for k in range(s):
                v = x[i, ch, k]
                acc += v
                acc2 += v * v
        mu = acc / m
        var = max(acc2 / m - mu * mu, 0.0)
        inv = 1.0 / math.sqrt(var + eps)
        mean[ch] = mu
        invstd[ch] = inv
        scale = gamma[ch] * inv
        shift = beta[ch] - mu * scale
        for i in range(n):
            for k in range(s):
                y[i, ch, k] = x[i, ch, k] * scale + shift


@nb.njit(parallel=True, cache=True)
def _fwd_eval(x, gamma, beta, rmean, rvar, eps, y):
    n, c, s = x.shape
    for ch in nb.prange(c):
        scale = gamma[ch] / math.sqrt(rvar[ch] + eps)
        shift = beta[ch] - rmean[ch] * scale
        for i in range(n):
            for k in range(s):
                y[i, ch, k] = x[i, ch, k] * scale + shift


@nb.njit(parallel=True, cache=True)
def _bwd(x, dy, gamma, mean, invstd, dx, dgamma, dbeta):
    n, c, s = x.shape
    m = n * s
    for ch in nb.prange(c):
        mu = mean[ch]
        inv = invstd[ch]
        sdy = 0.0
        sdyx = 0.0
        for i in range(n):
            for k in range(s):
                d = dy[i, ch, k]
                sdy += d
                sdyx += d * (x[i, ch, k] - mu) * inv
        dgamma[ch] += sdyx
        dbeta[ch] += sdy
        a = gamma[ch] * inv / m
        for i in range(n):
            for k in range(s):
                xhat = (x[i, ch, k] - mu) * inv
                dx[i, ch, k] = a * (m * dy[i, ch, k] - sdy - xhat * sdyx)


def _ncs(a):
    return a.reshape(a.shape[0], a.shape[1], -1)


def batchnorm_fwd_train(x, gamma, beta, eps, y, mean, invstd):
    _fwd_train(_ncs(x), gamma, beta, float(eps), _ncs(y), mean, invstd)


def batchnorm_fwd_eval(x, gamma, beta, running_mean, running_var, eps, y):
    _fwd_eval(_ncs(x), gamma, beta, running_mean, running_var, float(eps), _ncs(y))


def batchnorm_bwd(x, dy, gamma, mean, invstd, dx, dgamma, dbeta):
    _bwd(_ncs(x), _ncs(dy), gamma, mean, invstd, _ncs(dx), dgamma, dbeta)
