"""Element-wise activations with Numba (docs/KERNELS.md)."""
import math

import numba as nb
import numpy as np

_jit = nb.njit(parallel=True, cache=True)


@_jit
def _relu_fwd(x, y):
    for i in nb.prange(x.size):
        y[i] = 0 if x[i] <= 0 else x[i]  # NaN stays NaN, like np.maximum


@_jit
def _relu_bwd(x, dy, dx):
    for i in nb.prange(x.size):
        dx[i] = dy[i] if x[i] > 0 else 0


@_jit
def _leaky_fwd(x, y, a):
    for i in nb.prange(x.size):
        y[i] = x[i] if x[i] > 0 else a * x[i]


@_jit
def _leaky_bwd(x, dy, dx, a):
    for i in nb.prange(x.size):
        dx[i] = dy[i] if x[i] > 0 else a * dy[i]


@_jit
def _elu_fwd(x, y, a):
    for i in nb.prange(x.size):
        y[i] = x[i] if x[i] > 0 else a * (math.exp(x[i]) - 1)


@_jit
def _elu_bwd(x, dy, dx, a):
    for i in nb.prange(x.size):
        dx[i] = dy[i] if x[i] > 0 else dy[i] * a * math.exp(x[i])


@_jit
def _sigmoid_fwd(x, y):
    for i in nb.prange(x.size):
        # stable for large |x|: never exponentiate a positive number
        if x[i] >= 0:
            y[i] = 1 / (1 + math.exp(-x[i]))
        else:
            e = math.exp(x[i])
            y[i] = e / (1 + e)


@_jit
def _sigmoid_bwd(y, dy, dx):
    for i in nb.prange(y.size):
        dx[i] = dy[i] * y[i] * (1 - y[i])


@_jit
def _tanh_fwd(x, y):
    for i in nb.prange(x.size):
        y[i] = math.tanh(x[i])


@_jit
def _tanh_bwd(y, dy, dx):
    for i in nb.prange(y.size):
        dx[i] = dy[i] * (1 - y[i] * y[i])


def _flat(*arrays):
    return [a.reshape(-1) for a in arrays]


def relu_fwd(x, y):
    _relu_fwd(*_flat(x, y))


def relu_bwd(x, dy, dx):
    _relu_bwd(*_flat(x, dy, dx))


def leaky_relu_fwd(x, y, alpha):
    _leaky_fwd(*_flat(x, y), np.float32(alpha))


def leaky_relu_bwd(x, dy, dx, alpha):
    _leaky_bwd(*_flat(x, dy, dx), np.float32(alpha))


def elu_fwd(x, y, alpha):
    _elu_fwd(*_flat(x, y), np.float32(alpha))


def elu_bwd(x, dy, dx, alpha):
    _elu_bwd(*_flat(x, dy, dx), np.float32(alpha))


def sigmoid_fwd(x, y):
    _sigmoid_fwd(*_flat(x, y))


def sigmoid_bwd(y, dy, dx):
    _sigmoid_bwd(*_flat(y, dy, dx))


def tanh_fwd(x, y):
    _tanh_fwd(*_flat(x, y))


def tanh_bwd(y, dy, dx):
    _tanh_bwd(*_flat(y, dy, dx))


# -- PReLU (He et al. 2015): x viewed as (N, C, S), alpha (C,) per channel ------------------------

@_jit
def _prelu_fwd(x, alpha, y):
    n, c, s = x.shape
    for plane in nb.prange(n * c):
        i = plane // c
        ch = plane % c
        a = alpha[ch]
        for k in range(s):
            v = x[i, ch, k]
            y[i, ch, k] = v if v > 0 else a * v


@_jit
def _prelu_bwd(x, alpha, dy, dx, dalpha):
    # parallel over channels: each thread owns dalpha[ch], so the accumulation needs no atomics;
    # the sum runs in float64 like the reference's
    n, c, s = x.shape
    for ch in nb.prange(c):
        a = alpha[ch]
        acc = 0.0
        for i in range(n):
            for k in range(s):
                v = x[i, ch, k]
                d = dy[i, ch, k]
                if v > 0:
                    dx[i, ch, k] = d
                else:
                    dx[i, ch, k] = a * d
                    acc += d * v
        dalpha[ch] += acc


def _ncs(a):
    return a.reshape(a.shape[0], a.shape[1], -1)


def prelu_fwd(x, alpha, y):
    _prelu_fwd(_ncs(x), alpha, _ncs(y))


def prelu_bwd(x, alpha, dy, dx, dalpha):
    _prelu_bwd(_ncs(x), alpha, _ncs(dy), _ncs(dx), dalpha)
