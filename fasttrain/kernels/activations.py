"""Activation kernels (reference). x, y, dy, dx: any shape, same shape; outputs preallocated.
Works for float32 and float64; the arithmetic stays in the arrays' dtype."""
import numpy as np

OPS = ["relu_fwd", "relu_bwd", "leaky_relu_fwd", "leaky_relu_bwd", "elu_fwd", "elu_bwd",
       "sigmoid_fwd", "sigmoid_bwd", "tanh_fwd", "tanh_bwd", "prelu_fwd", "prelu_bwd"]


def relu_fwd_ref(x, y):
    np.maximum(x, 0, out=y)


def relu_bwd_ref(x, dy, dx):
    # subgradient 0 at x == 0
    np.multiply(dy, x > 0, out=dx)


def leaky_relu_fwd_ref(x, y, alpha):
    # Maas et al. 2013: y = x for x > 0, alpha * x otherwise
    a = x.dtype.type(alpha)
    np.copyto(y, np.where(x > 0, x, a * x))


def leaky_relu_bwd_ref(x, dy, dx, alpha):
    a = dy.dtype.type(alpha)
    np.copyto(dx, np.where(x > 0, dy, a * dy))


def elu_fwd_ref(x, y, alpha):
    # Clevert et al. 2016: y = x for x > 0, alpha * (exp(x) - 1) otherwise.
    # expm1 of min(x, 0): exact near 0 and never overflows on the branch that is discarded.
    a = x.dtype.type(alpha)
    np.copyto(y, np.where(x > 0, x, a * np.expm1(np.minimum(x, 0))))


def elu_bwd_ref(x, dy, dx, alpha):
    # d/dx alpha * (exp(x) - 1) = alpha * exp(x) for x <= 0
    a = dy.dtype.type(alpha)
    np.copyto(dx, np.where(x > 0, dy, dy * (a * np.exp(np.minimum(x, 0)))))


def sigmoid_fwd_ref(x, y):
    # Stable for large |x|: only exp(-|x|) in (0, 1] is ever computed, so nothing overflows;
    # x >= 0: 1 / (1 + e), x < 0: e / (1 + e), with e = exp(-|x|).
    e = np.exp(-np.abs(x))
    np.copyto(y, np.where(x >= 0, 1 / (1 + e), e / (1 + e)))


def sigmoid_bwd_ref(y, dy, dx):
    # uses the output: sigma' = y (1 - y)
    np.multiply(dy, y * (1 - y), out=dx)


def tanh_fwd_ref(x, y):
    np.tanh(x, out=y)


def tanh_bwd_ref(y, dy, dx):
    np.multiply(dy, 1 - y * y, out=dx)


def _per_channel(alpha, x):
    # alpha: (C,) -> (1, C, 1, ...) to broadcast against x: (N, C, ...)
    return alpha.reshape((1, -1) + (1,) * (x.ndim - 2))


def prelu_fwd_ref(x, alpha, y):
    # He et al. 2015 (PReLU): y = x for x > 0, alpha_c * x otherwise; x: (N, C, ...), alpha: (C,)
    np.copyto(y, np.where(x > 0, x, _per_channel(alpha, x) * x))


def prelu_bwd_ref(x, alpha, dy, dx, dalpha):
    # dx overwritten; dalpha (C,) accumulated: dalpha_c += sum over x <= 0 of dy * x
    a = _per_channel(alpha, x)
    neg = x <= 0
    np.copyto(dx, np.where(neg, a * dy, dy))
    axes = (0,) + tuple(range(2, x.ndim))
    dalpha += np.sum(np.where(neg, dy * x, 0), axis=axes, dtype=np.float64).astype(dalpha.dtype)
