"""Element-wise activations with Numba (docs/KERNELS.md). exp, expm1, tanh and sigmoid come from
_vmath.py (vmath.h's algorithm): math.exp / math.tanh are scalar libm calls that keep the loops
from vectorizing."""
import numba as nb
import numpy as np

from ._vmath import exp_f32, expm1_f32, sigmoid_f32, tanh_f32

_jit = nb.njit(parallel=True, cache=True)
_F0 = np.float32(0.0)


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


# Clevert, Unterthiner, Hochreiter 2016. expm1 / exp of the non-positive part, written as a select
# that keeps NaN (min(NaN, 0) would give 0): accurate near 0, and the discarded side never
# overflows. Both sides are computed and one is selected, so the loop has no branch to vectorize.
@_jit
def _elu_fwd(x, y, a):
    for i in nb.prange(x.size):
        xi = x[i]
        e = a * expm1_f32(_F0 if xi > _F0 else xi)
        y[i] = xi if xi > _F0 else e


@_jit
def _elu_bwd(x, dy, dx, a):
    for i in nb.prange(x.size):
        xi = x[i]
        g = dy[i] * (a * exp_f32(_F0 if xi > _F0 else xi))
        dx[i] = dy[i] if xi > _F0 else g


@_jit
def _sigmoid_fwd(x, y):
    for i in nb.prange(x.size):
        y[i] = sigmoid_f32(x[i])


@_jit
def _sigmoid_bwd(y, dy, dx):
    for i in nb.prange(y.size):
        dx[i] = dy[i] * y[i] * (1 - y[i])


@_jit
def _tanh_fwd(x, y):
    for i in nb.prange(x.size):
        y[i] = tanh_f32(x[i])


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
