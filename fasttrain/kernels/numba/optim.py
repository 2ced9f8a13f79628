"""Optimizer updates with Numba: one parallel read-modify-write pass each (docs/KERNELS.md)."""
import math

import numba as nb
import numpy as np

_jit = nb.njit(parallel=True, fastmath=False, cache=True)


@nb.njit(inline="always")
def _eff_grad(g, p, l2, l1):
    # g' = g + l2 p + l1 sign(p)
    s = 1.0 if p > 0 else (-1.0 if p < 0 else 0.0)
    return g + l2 * p + l1 * s


@_jit
def _sgd(p, g, lr, l2, l1):
    for i in nb.prange(p.size):
        p[i] -= lr * _eff_grad(g[i], p[i], l2, l1)


@_jit
def _momentum(p, g, v, lr, mu, l2, l1):
    for i in nb.prange(p.size):
        vi = mu * v[i] + _eff_grad(g[i], p[i], l2, l1)
        v[i] = vi
        p[i] -= lr * vi


@_jit
def _nesterov(p, g, v, lr, mu, l2, l1):
    for i in nb.prange(p.size):
        ge = _eff_grad(g[i], p[i], l2, l1)
        vi = mu * v[i] + ge
        v[i] = vi
        p[i] -= lr * (ge + mu * vi)


@_jit
def _adagrad(p, g, h, lr, eps, l2, l1):
    for i in nb.prange(p.size):
        ge = _eff_grad(g[i], p[i], l2, l1)
        hi = h[i] + ge * ge
        h[i] = hi
        p[i] -= lr * ge / (math.sqrt(hi) + eps)


@_jit
def _rmsprop(p, g, s, lr, rho, eps, l2, l1):
    for i in nb.prange(p.size):
        ge = _eff_grad(g[i], p[i], l2, l1)
        si = rho * s[i] + (1 - rho) * ge * ge
        s[i] = si
        p[i] -= lr * ge / (math.sqrt(si) + eps)


@_jit
def _rmsprop_centered(p, g, s, mg, lr, rho, eps, l2, l1):
    for i in nb.prange(p.size):
        ge = _eff_grad(g[i], p[i], l2, l1)
        si = rho * s[i] + (1 - rho) * ge * ge
        mi = rho * mg[i] + (1 - rho) * ge
        s[i] = si
        mg[i] = mi
        p[i] -= lr * ge / (math.sqrt(si - mi * mi) + eps)


@_jit
def _adam(p, g, m, v, lr, b1, b2, eps, bc1, bc2, l2, l1, decoupled_wd):
    shrink = 1 - lr * decoupled_wd
    step = lr / bc1
    inv_sqrt_bc2 = 1.0 / math.sqrt(bc2)
    for i in nb.prange(p.size):
        pi = p[i]
        ge = _eff_grad(g[i], pi, l2, l1)
        mi = b1 * m[i] + (1 - b1) * ge
        vi = b2 * v[i] + (1 - b2) * ge * ge
        m[i] = mi
        v[i] = vi
        p[i] = pi * shrink - step * mi / (math.sqrt(vi) * inv_sqrt_bc2 + eps)


def sgd_step(p, g, lr, l2, l1):
    _sgd(p, g, np.float32(lr), np.float32(l2), np.float32(l1))


def momentum_step(p, g, v, lr, mu, l2, l1):
    _momentum(p, g, v, np.float32(lr), np.float32(mu), np.float32(l2), np.float32(l1))


def nesterov_step(p, g, v, lr, mu, l2, l1):
    _nesterov(p, g, v, np.float32(lr), np.float32(mu), np.float32(l2), np.float32(l1))


def adagrad_step(p, g, h, lr, eps, l2, l1):
    _adagrad(p, g, h, np.float32(lr), np.float32(eps), np.float32(l2), np.float32(l1))


def rmsprop_step(p, g, s, lr, rho, eps, l2, l1):
    _rmsprop(p, g, s, np.float32(lr), np.float32(rho), np.float32(eps), np.float32(l2), np.float32(l1))


def rmsprop_centered_step(p, g, s, mg, lr, rho, eps, l2, l1):
    _rmsprop_centered(p, g, s, mg, np.float32(lr), np.float32(rho), np.float32(eps), np.float32(l2), np.float32(l1))


def adam_step(p, g, m, v, lr, beta1, beta2, eps, bc1, bc2, l2, l1, decoupled_wd):
    f = np.float32
    _adam(p, g, m, v, f(lr), f(beta1), f(beta2), f(eps), f(bc1), f(bc2), f(l2), f(l1), f(decoupled_wd))
