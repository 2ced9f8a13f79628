"""Batch normalization with Numba (docs/KERNELS.md): statistics in one pass (sums in float64 of
the values shifted by the channel's first value, so the variance does not cancel when
|mean| >> std), normalize + affine (+ the fused ReLU) in a second; backward in two passes, reading dy masked by the
fused ReLU's output when there is one. Parallel over channels."""
import math

import numba as nb
import numpy as np

# The per-channel sums may be reassociated (so LLVM vectorizes them, several partial sums per
# lane) and a * b + c contracted to FMA; nothing that assumes away NaN, inf or signed zero.
_FASTMATH = {"reassoc", "contract"}


@nb.njit(cache=True, inline="always")
def _affine(x, y, ch, scale, shift, relu, res, has_res):
    # res: the fused residual (a ResNet block's shortcut) added before the ReLU when has_res
    n, _, s = x.shape
    for i in range(n):
        for k in range(s):
            v = x[i, ch, k] * scale + shift
            if has_res:
                v += res[i, ch, k]
            y[i, ch, k] = 0.0 if relu and v < 0.0 else v   # NaN kept, like the reference


@nb.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _fwd_train(x, gamma, beta, eps, y, mean, invstd, relu, res, has_res):
    n, c, s = x.shape
    m = n * s
    for ch in nb.prange(c):
        # "shifted data" variance (Chan, Golub & LeVeque 1983): E[d^2] - E[d]^2 with d = x - K and
        # K = a value of the channel, so the cancellation is bounded by (mean - K)^2 / var, where
        # E[x^2] - E[x]^2 loses everything at |mean| / std ~ 1e4 in float32
        shift = np.float64(x[0, ch, 0]) if m > 0 else 0.0
        acc = 0.0
        acc2 = 0.0
        for i in range(n):
            for k in range(s):
                d = np.float64(x[i, ch, k]) - shift
                acc += d
                acc2 += d * d
        dmu = acc / m
        mu = shift + dmu
        var = max(acc2 / m - dmu * dmu, 0.0)
        inv = 1.0 / math.sqrt(var + eps)
        mean[ch] = mu
        invstd[ch] = inv
        scale = gamma[ch] * inv
        shift = beta[ch] - mu * scale
        _affine(x, y, ch, scale, shift, relu, res, has_res)


@nb.njit(parallel=True, cache=True)
def _fwd_eval(x, gamma, beta, rmean, rvar, eps, y, relu, res, has_res):
    n, c, s = x.shape
    for ch in nb.prange(c):
        scale = gamma[ch] / math.sqrt(rvar[ch] + eps)
        shift = beta[ch] - rmean[ch] * scale
        _affine(x, y, ch, scale, shift, relu, res, has_res)


@nb.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _bwd(x, dy, gamma, mean, invstd, dx, dgamma, dbeta, y, relu, dres, has_dres):
    # relu: dy counts only where the forward's output y > 0 (y is a dummy otherwise); has_dres:
    # dres receives that masked dy (the fused residual's gradient)
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
                if relu and not y[i, ch, k] > 0:
                    d = 0.0
                sdy += d
                sdyx += d * (x[i, ch, k] - mu) * inv
        dgamma[ch] += sdyx
        dbeta[ch] += sdy
        a = gamma[ch] * inv / m
        for i in range(n):
            for k in range(s):
                xhat = (x[i, ch, k] - mu) * inv
                d = dy[i, ch, k]
                if relu and not y[i, ch, k] > 0:
                    d = 0.0
                if has_dres:
                    dres[i, ch, k] = d
                dx[i, ch, k] = a * (m * d - sdy - xhat * sdyx)


def _ncs(a):
    return a.reshape(a.shape[0], a.shape[1], -1)


def batchnorm_fwd_train(x, gamma, beta, eps, y, mean, invstd, relu=False, residual=None):
    xs = _ncs(x)
    _fwd_train(xs, gamma, beta, float(eps), _ncs(y), mean, invstd, bool(relu),
               xs if residual is None else _ncs(residual), residual is not None)


def batchnorm_fwd_eval(x, gamma, beta, running_mean, running_var, eps, y, relu=False, residual=None):
    xs = _ncs(x)
    _fwd_eval(xs, gamma, beta, running_mean, running_var, float(eps), _ncs(y), bool(relu),
              xs if residual is None else _ncs(residual), residual is not None)


def batchnorm_bwd(x, dy, gamma, mean, invstd, dx, dgamma, dbeta, y=None, dres=None):
    xs, dxs = _ncs(x), _ncs(dx)
    _bwd(xs, _ncs(dy), gamma, mean, invstd, dxs, dgamma, dbeta, xs if y is None else _ncs(y), y is not None,
         dxs if dres is None else _ncs(dres), dres is not None)
