"""Optimizer updates with Numba: one parallel read-modify-write pass each (docs/KERNELS.md)."""
import math

import numba as nb
import numpy as np

_jit = nb.njit(parallel=True, fastmath=False, cache=True)


@nb.njit(inline="always")
def _eff_grad(g, p, l2, l1):
    # g' = g + l2 p + l1 sign(p), all in float32: a Python literal such as 1.0 or 1 - rho is
    # float64 in Numba and would widen the whole update (half the SIMD width); the C++ and the
    # NumPy reference stay in float32
    l1s = l1 if p > 0 else (-l1 if p < 0 else l1 - l1)
    return g + l2 * p + l1s


@_jit
def _sgd(p, g, lr, l2, l1):
    for i in nb.prange(p.size):
        p[i] -= lr * _eff_grad(g[i], p[i], l2, l1)


@_jit
def _momentum(p, g, v, lr, mu, keep, l2, l1):
    # keep = 1 - dampening, float32 from the host
    for i in nb.prange(p.size):
        vi = mu * v[i] + keep * _eff_grad(g[i], p[i], l2, l1)
        v[i] = vi
        p[i] -= lr * vi


@_jit
def _nesterov(p, g, v, lr, mu, keep, l2, l1):
    for i in nb.prange(p.size):
        ge = _eff_grad(g[i], p[i], l2, l1)
        vi = mu * v[i] + keep * ge
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
def _rmsprop(p, g, s, lr, rho, one_m_rho, eps, l2, l1):
    for i in nb.prange(p.size):
        ge = _eff_grad(g[i], p[i], l2, l1)
        si = rho * s[i] + one_m_rho * ge * ge
        s[i] = si
        p[i] -= lr * ge / (math.sqrt(si) + eps)


@nb.njit(inline="always")
def _centered_rms(s, mg, i, ge, rho, one_m_rho):
    """Updates s[i] and mg[i]; returns sqrt(s - mg^2), the running standard deviation (Graves 2013)."""
    si = rho * s[i] + one_m_rho * ge * ge
    mi = rho * mg[i] + one_m_rho * ge
    s[i] = si
    mg[i] = mi
    return math.sqrt(si - mi * mi)


@_jit
def _rmsprop_centered(p, g, s, mg, lr, rho, one_m_rho, eps, l2, l1):
    for i in nb.prange(p.size):
        ge = _eff_grad(g[i], p[i], l2, l1)
        p[i] -= lr * ge / (_centered_rms(s, mg, i, ge, rho, one_m_rho) + eps)


@_jit
def _rmsprop_momentum(p, g, s, b, lr, rho, one_m_rho, eps, mu, l2, l1):
    for i in nb.prange(p.size):
        ge = _eff_grad(g[i], p[i], l2, l1)
        si = rho * s[i] + one_m_rho * ge * ge
        s[i] = si
        bi = mu * b[i] + ge / (math.sqrt(si) + eps)
        b[i] = bi
        p[i] -= lr * bi


@_jit
def _rmsprop_centered_momentum(p, g, s, mg, b, lr, rho, one_m_rho, eps, mu, l2, l1):
    for i in nb.prange(p.size):
        ge = _eff_grad(g[i], p[i], l2, l1)
        bi = mu * b[i] + ge / (_centered_rms(s, mg, i, ge, rho, one_m_rho) + eps)
        b[i] = bi
        p[i] -= lr * bi


@nb.njit(inline="always")
def _adam_moments(m, v, i, ge, b1, one_m_b1, b2, one_m_b2):
    """m[i], v[i] after one step, stored and returned."""
    mi = b1 * m[i] + one_m_b1 * ge
    vi = b2 * v[i] + one_m_b2 * ge * ge
    m[i] = mi
    v[i] = vi
    return mi, vi


@_jit
def _adam(p, g, m, v, lr, b1, one_m_b1, b2, one_m_b2, eps, step, inv_sqrt_bc2, l2, l1, shrink):
    # step = lr / bc1, inv_sqrt_bc2 = 1 / sqrt(bc2), shrink = 1 - lr * decoupled_wd: float32, host
    for i in nb.prange(p.size):
        pi = p[i]
        mi, vi = _adam_moments(m, v, i, _eff_grad(g[i], pi, l2, l1), b1, one_m_b1, b2, one_m_b2)
        p[i] = pi * shrink - step * mi / (math.sqrt(vi) * inv_sqrt_bc2 + eps)


@_jit
def _adam_amsgrad(p, g, m, v, vmax, lr, b1, one_m_b1, b2, one_m_b2, eps, step, inv_sqrt_bc2, l2, l1, shrink):
    for i in nb.prange(p.size):
        pi = p[i]
        mi, vi = _adam_moments(m, v, i, _eff_grad(g[i], pi, l2, l1), b1, one_m_b1, b2, one_m_b2)
        vi = vmax[i] if vmax[i] > vi else vi  # a NaN in v propagates, as np.maximum
        vmax[i] = vi
        p[i] = pi * shrink - step * mi / (math.sqrt(vi) * inv_sqrt_bc2 + eps)


def sgd_step(p, g, lr, l2, l1):
    _sgd(p, g, np.float32(lr), np.float32(l2), np.float32(l1))


def momentum_step(p, g, v, lr, mu, dampening, l2, l1):
    f = np.float32
    _momentum(p, g, v, f(lr), f(mu), f(1) - f(dampening), f(l2), f(l1))


def nesterov_step(p, g, v, lr, mu, dampening, l2, l1):
    f = np.float32
    _nesterov(p, g, v, f(lr), f(mu), f(1) - f(dampening), f(l2), f(l1))


def adagrad_step(p, g, h, lr, eps, l2, l1):
    _adagrad(p, g, h, np.float32(lr), np.float32(eps), np.float32(l2), np.float32(l1))


def rmsprop_step(p, g, s, lr, rho, eps, l2, l1):
    f = np.float32
    _rmsprop(p, g, s, f(lr), f(rho), f(1 - f(rho)), f(eps), f(l2), f(l1))


def rmsprop_centered_step(p, g, s, mg, lr, rho, eps, l2, l1):
    f = np.float32
    _rmsprop_centered(p, g, s, mg, f(lr), f(rho), f(1 - f(rho)), f(eps), f(l2), f(l1))


def rmsprop_momentum_step(p, g, s, b, lr, rho, eps, mu, l2, l1):
    f = np.float32
    _rmsprop_momentum(p, g, s, b, f(lr), f(rho), f(1 - f(rho)), f(eps), f(mu), f(l2), f(l1))


def rmsprop_centered_momentum_step(p, g, s, mg, b, lr, rho, eps, mu, l2, l1):
    f = np.float32
    _rmsprop_centered_momentum(p, g, s, mg, b, f(lr), f(rho), f(1 - f(rho)), f(eps), f(mu), f(l2), f(l1))


def _adam_scalars(lr, beta1, beta2, eps, bc1, bc2, l2, l1, decoupled_wd):
    """The float32 scalars of the Adam kernels, folded on the host once per call."""
    f = np.float32
    return (f(lr), f(beta1), f(1 - f(beta1)), f(beta2), f(1 - f(beta2)), f(eps), f(lr) / f(bc1),
            f(1.0) / np.sqrt(f(bc2)), f(l2), f(l1), f(1) - f(lr) * f(decoupled_wd))


def adam_step(p, g, m, v, lr, beta1, beta2, eps, bc1, bc2, l2, l1, decoupled_wd):
    _adam(p, g, m, v, *_adam_scalars(lr, beta1, beta2, eps, bc1, bc2, l2, l1, decoupled_wd))


def adam_amsgrad_step(p, g, m, v, vmax, lr, beta1, beta2, eps, bc1, bc2, l2, l1, decoupled_wd):
    _adam_amsgrad(p, g, m, v, vmax, *_adam_scalars(lr, beta1, beta2, eps, bc1, bc2, l2, l1, decoupled_wd))
