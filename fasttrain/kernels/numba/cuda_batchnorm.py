"""Batch normalization with numba-cuda (docs/KERNELS.md): one block per channel reduces over the
N*S elements of that channel (per-thread float64 partial sums, then a shared-memory tree), and the
same block then normalizes (+ the fused ReLU) or forms dx (from dy masked by the fused ReLU's
output). Simple and exact enough; a C++ kernel that splits a channel over many blocks wins when C
is small. See _cuda_common for how arrays are taken."""
import math

import numpy as np
from numba import cuda, float64

from ._cuda_common import THREADS, dev_nd, stream_of


@cuda.jit(device=True, inline=True)
def _block_sum2(a, b, sa, sb):
    # sum of a and b over the block, returned to every thread
    t = cuda.threadIdx.x
    sa[t] = a
    sb[t] = b
    cuda.syncthreads()
    half = THREADS // 2
    while half > 0:
        if t < half:
            sa[t] += sa[t + half]
            sb[t] += sb[t + half]
        cuda.syncthreads()
        half //= 2
    ra, rb = sa[0], sb[0]
    cuda.syncthreads()
    return ra, rb


@cuda.jit
def _fwd_train(x, gamma, beta, eps, y, mean, invstd, relu, res, has_res):
    # res: the fused residual added before the ReLU when has_res (a dummy otherwise)
    n, c, s = x.shape
    ch = cuda.blockIdx.x
    m = n * s
    sa = cuda.shared.array(THREADS, float64)
    sb = cuda.shared.array(THREADS, float64)
    # sums of d = x - K with K the channel's first value (shifted-data variance, as the CPU
    # kernels): the cancellation in E[d^2] - E[d]^2 is bounded by (mean - K)^2 / var
    shift = float64(x[0, ch, 0])
    acc = 0.0
    acc2 = 0.0
    for e in range(cuda.threadIdx.x, m, THREADS):
        d = float64(x[e // s, ch, e % s]) - shift
        acc += d
        acc2 += d * d
    acc, acc2 = _block_sum2(acc, acc2, sa, sb)
    dmu = acc / m
    mu = shift + dmu
    var = max(acc2 / m - dmu * dmu, 0.0)   # biased variance
    inv = 1.0 / math.sqrt(var + eps)
    if cuda.threadIdx.x == 0:
        mean[ch] = mu
        invstd[ch] = inv
    scale = gamma[ch] * inv
    shift = beta[ch] - mu * scale
    for e in range(cuda.threadIdx.x, m, THREADS):
        v = x[e // s, ch, e % s] * scale + shift
        if has_res:
            v += res[e // s, ch, e % s]
        y[e // s, ch, e % s] = 0.0 if relu and v < 0.0 else v   # NaN kept, like the reference


@cuda.jit
def _fwd_eval(x, gamma, beta, rmean, rvar, eps, y, relu, res, has_res):
    n, c, s = x.shape
    total = n * c * s
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        ch = (e // s) % c
        scale = gamma[ch] / math.sqrt(rvar[ch] + eps)
        i = e // (c * s)
        k = e % s
        v = x[i, ch, k] * scale + (beta[ch] - rmean[ch] * scale)
        if has_res:
            v += res[i, ch, k]
        y[i, ch, k] = 0.0 if relu and v < 0.0 else v


@cuda.jit(device=True, inline=True)
def _grad_in(dy, y, relu, i, ch, k):
    # dy, or with the fused ReLU dy where the forward's output y > 0 (y is a dummy otherwise)
    d = dy[i, ch, k]
    if relu and not y[i, ch, k] > 0:
        d = 0.0
    return d


@cuda.jit
def _bwd(x, dy, gamma, mean, invstd, dx, dgamma, dbeta, y, relu, dres, has_dres):
    # dres: receives the masked dy (the fused residual's gradient) when has_dres
    n, c, s = x.shape
    ch = cuda.blockIdx.x
    m = n * s
    sa = cuda.shared.array(THREADS, float64)
    sb = cuda.shared.array(THREADS, float64)
    mu = mean[ch]
    inv = invstd[ch]
    sdy = 0.0
    sdyx = 0.0
    for e in range(cuda.threadIdx.x, m, THREADS):
        d = float64(_grad_in(dy, y, relu, e // s, ch, e % s))
        sdy += d
        sdyx += d * (x[e // s, ch, e % s] - mu) * inv
    sdy, sdyx = _block_sum2(sdy, sdyx, sa, sb)
    if cuda.threadIdx.x == 0:
        dgamma[ch] += sdyx
        dbeta[ch] += sdy
    a = gamma[ch] * inv / m
    for e in range(cuda.threadIdx.x, m, THREADS):
        i = e // s
        k = e % s
        xhat = (x[i, ch, k] - mu) * inv
        g = _grad_in(dy, y, relu, i, ch, k)
        if has_dres:
            dres[i, ch, k] = g
        dx[i, ch, k] = a * (m * g - sdy - xhat * sdyx)


def _ncs(a):
    return (a.shape[0], a.shape[1], int(np.prod(a.shape[2:], dtype=np.int64)))


def batchnorm_fwd_train(x, gamma, beta, eps, y, mean, invstd, relu=False, residual=None, stream=0):
    sh = _ncs(x)
    if x.size:
        xd = dev_nd(x, sh)
        _fwd_train[sh[1], THREADS, stream_of(stream)](xd, dev_nd(gamma, gamma.shape),
                                                      dev_nd(beta, beta.shape), float(eps), dev_nd(y, sh),
                                                      dev_nd(mean, mean.shape), dev_nd(invstd, invstd.shape),
                                                      bool(relu), xd if residual is None else dev_nd(residual, sh),
                                                      residual is not None)


def batchnorm_fwd_eval(x, gamma, beta, running_mean, running_var, eps, y, relu=False, residual=None, stream=0):
    sh = _ncs(x)
    if x.size:
        blocks = max(1, min((x.size + THREADS - 1) // THREADS, 65535))
        xd = dev_nd(x, sh)
        _fwd_eval[blocks, THREADS, stream_of(stream)](xd, dev_nd(gamma, gamma.shape),
                                                      dev_nd(beta, beta.shape), dev_nd(running_mean, gamma.shape),
                                                      dev_nd(running_var, gamma.shape), float(eps), dev_nd(y, sh),
                                                      bool(relu), xd if residual is None else dev_nd(residual, sh),
                                                      residual is not None)


def batchnorm_bwd(x, dy, gamma, mean, invstd, dx, dgamma, dbeta, y=None, dres=None, stream=0):
    sh = _ncs(x)
    if x.size:
        c = gamma.shape
        xd = dev_nd(x, sh)
        # unused optional arrays are stood in for by x, which the kernel only reads: with host arrays
        # (numba copies them in and back) a written stand-in would overwrite the real output on the way back
        _bwd[sh[1], THREADS, stream_of(stream)](xd, dev_nd(dy, sh), dev_nd(gamma, c), dev_nd(mean, c),
                                                dev_nd(invstd, c), dev_nd(dx, sh), dev_nd(dgamma, c),
                                                dev_nd(dbeta, c), xd if y is None else dev_nd(y, sh), y is not None,
                                                xd if dres is None else dev_nd(dres, sh), dres is not None)
