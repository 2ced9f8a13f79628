"""Element-wise activations with numba-cuda (docs/KERNELS.md), grid-stride loops over the flat
arrays; PReLU's dalpha is a per-channel reduction (one block per channel). See _cuda_common."""
import math

import numpy as np
from numba import cuda, float64

from ._cuda_common import THREADS, dev, dev_nd, grid, stream_of


@cuda.jit
def _unary(kind, x, dy, out, a):
    # kind: 0 relu_fwd, 1 relu_bwd, 2 leaky_fwd, 3 leaky_bwd, 4 elu_fwd, 5 elu_bwd, 6 sigmoid_fwd,
    # 7 sigmoid_bwd, 8 tanh_fwd, 9 tanh_bwd (x is y for 7 and 9); `kind` is a launch constant, so
    # every thread takes the same branch
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        if kind == 0:
            out[i] = v if v > 0 else 0
        elif kind == 1:
            out[i] = dy[i] if v > 0 else 0
        elif kind == 2:
            out[i] = v if v > 0 else a * v
        elif kind == 3:
            out[i] = dy[i] if v > 0 else a * dy[i]
        elif kind == 4:
            out[i] = v if v > 0 else a * math.expm1(min(v, 0))
        elif kind == 5:
            out[i] = dy[i] if v > 0 else dy[i] * (a * math.exp(min(v, 0)))
        elif kind == 6:
            e = math.exp(-abs(v))          # never exponentiates a positive number
            out[i] = 1 / (1 + e) if v >= 0 else e / (1 + e)
        elif kind == 7:
            out[i] = dy[i] * (v * (1 - v))
        elif kind == 8:
            out[i] = math.tanh(v)
        else:
            out[i] = dy[i] * (1 - v * v)


@cuda.jit
def _prelu_fwd(x, alpha, y):
    n, c, s = x.shape
    for e in range(cuda.grid(1), n * c * s, cuda.gridsize(1)):
        i = e // (c * s)
        ch = (e // s) % c
        k = e % s
        v = x[i, ch, k]
        y[i, ch, k] = v if v > 0 else alpha[ch] * v


@cuda.jit
def _prelu_bwd(x, alpha, dy, dx, dalpha):
    n, c, s = x.shape
    ch = cuda.blockIdx.x
    sh = cuda.shared.array(THREADS, float64)
    a = alpha[ch]
    acc = 0.0
    for e in range(cuda.threadIdx.x, n * s, THREADS):
        i = e // s
        k = e % s
        v = x[i, ch, k]
        d = dy[i, ch, k]
        if v > 0:
            dx[i, ch, k] = d
        else:
            dx[i, ch, k] = a * d
            acc += d * v
    t = cuda.threadIdx.x
    sh[t] = acc
    cuda.syncthreads()
    half = THREADS // 2
    while half > 0:
        if t < half:
            sh[t] += sh[t + half]
        cuda.syncthreads()
        half //= 2
    if t == 0:
        dalpha[ch] += sh[0]


def _run(kind, x, dy, out, a, stream):
    if x.size:
        _unary[grid(x.size), THREADS, stream_of(stream)](kind, dev(x), dev(dy), dev(out), np.float32(a))


def relu_fwd(x, y, stream=0):
    _run(0, x, x, y, 0.0, stream)


def relu_bwd(x, dy, dx, stream=0):
    _run(1, x, dy, dx, 0.0, stream)


def leaky_relu_fwd(x, y, alpha, stream=0):
    _run(2, x, x, y, alpha, stream)


def leaky_relu_bwd(x, dy, dx, alpha, stream=0):
    _run(3, x, dy, dx, alpha, stream)


def elu_fwd(x, y, alpha, stream=0):
    _run(4, x, x, y, alpha, stream)


def elu_bwd(x, dy, dx, alpha, stream=0):
    _run(5, x, dy, dx, alpha, stream)


def sigmoid_fwd(x, y, stream=0):
    _run(6, x, x, y, 0.0, stream)


def sigmoid_bwd(y, dy, dx, stream=0):
    _run(7, y, dy, dx, 0.0, stream)


def tanh_fwd(x, y, stream=0):
    _run(8, x, x, y, 0.0, stream)


def tanh_bwd(y, dy, dx, stream=0):
    _run(9, y, dy, dx, 0.0, stream)


def _ncs(a):
    return (a.shape[0], a.shape[1], int(np.prod(a.shape[2:], dtype=np.int64)))


def prelu_fwd(x, alpha, y, stream=0):
    if x.size:
        sh = _ncs(x)
        _prelu_fwd[grid(x.size), THREADS, stream_of(stream)](dev_nd(x, sh), dev_nd(alpha, alpha.shape), dev_nd(y, sh))


def prelu_bwd(x, alpha, dy, dx, dalpha, stream=0):
    if x.size:
        sh = _ncs(x)
        c = alpha.shape
        _prelu_bwd[sh[1], THREADS, stream_of(stream)](dev_nd(x, sh), dev_nd(alpha, c), dev_nd(dy, sh),
                                                      dev_nd(dx, sh), dev_nd(dalpha, c))
