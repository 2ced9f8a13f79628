"""Optimizer updates with numba-cuda: one launch over the flat arena, a grid-stride loop, the same
formulas as the reference (docs/KERNELS.md). See _cuda_common for how arrays are taken."""
import math

import numpy as np
from numba import cuda

from ._cuda_common import THREADS, dev, grid, stream_of


@cuda.jit(device=True, inline=True)
def _eff_grad(g, p, l2, l1):
    s = 1.0 if p > 0 else (-1.0 if p < 0 else 0.0)
    return g + l2 * p + l1 * s


@cuda.jit
def _sgd(p, g, lr, l2, l1):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        p[i] -= lr * _eff_grad(g[i], p[i], l2, l1)


@cuda.jit
def _momentum(p, g, v, lr, mu, keep, l2, l1, nesterov):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        ge = _eff_grad(g[i], p[i], l2, l1)
        vi = mu * v[i] + keep * ge  # keep = 1 - dampening
        v[i] = vi
        p[i] -= lr * (ge + mu * vi) if nesterov else lr * vi


@cuda.jit
def _adagrad(p, g, h, lr, eps, l2, l1):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        ge = _eff_grad(g[i], p[i], l2, l1)
        hi = h[i] + ge * ge
        h[i] = hi
        p[i] -= lr * ge / (math.sqrt(hi) + eps)


@cuda.jit
def _rmsprop(p, g, s, mg, b, lr, rho, eps, mu, l2, l1, centered, momentum):
    # mg (centered, Graves 2013) and b (momentum) are ignored when their flag is off
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        ge = _eff_grad(g[i], p[i], l2, l1)
        si = rho * s[i] + (1 - rho) * ge * ge
        s[i] = si
        if centered:
            mi = rho * mg[i] + (1 - rho) * ge
            mg[i] = mi
            si = si - mi * mi
        step = ge / (math.sqrt(si) + eps)
        if momentum:
            step = mu * b[i] + step
            b[i] = step
        p[i] -= lr * step


@cuda.jit
def _adam(p, g, m, v, vmax, lr, b1, b2, eps, bc1, bc2, l2, l1, wd, amsgrad):
    shrink = 1 - lr * wd
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        pi = p[i]
        ge = _eff_grad(g[i], pi, l2, l1)   # p before the decoupled decay
        mi = b1 * m[i] + (1 - b1) * ge
        vi = b2 * v[i] + (1 - b2) * ge * ge
        m[i] = mi
        v[i] = vi
        if amsgrad:  # Reddi et al. 2018: the running maximum of v
            vi = vmax[i] if vmax[i] > vi else vi
            vmax[i] = vi
        p[i] = pi * shrink - lr * (mi / bc1) / (math.sqrt(vi / bc2) + eps)


_f = np.float32


def _launch(kernel, p, stream, *args):
    n = p.size
    if n:
        kernel[grid(n), THREADS, stream_of(stream)](*args)


def sgd_step(p, g, lr, l2, l1, stream=0):
    _launch(_sgd, p, stream, dev(p), dev(g), _f(lr), _f(l2), _f(l1))


def momentum_step(p, g, v, lr, mu, dampening, l2, l1, stream=0):
    _launch(_momentum, p, stream, dev(p), dev(g), dev(v), _f(lr), _f(mu), _f(1 - dampening), _f(l2), _f(l1),
            False)


def nesterov_step(p, g, v, lr, mu, dampening, l2, l1, stream=0):
    _launch(_momentum, p, stream, dev(p), dev(g), dev(v), _f(lr), _f(mu), _f(1 - dampening), _f(l2), _f(l1),
            True)


def adagrad_step(p, g, h, lr, eps, l2, l1, stream=0):
    _launch(_adagrad, p, stream, dev(p), dev(g), dev(h), _f(lr), _f(eps), _f(l2), _f(l1))


def _rms(p, g, s, mg, b, lr, rho, eps, mu, l2, l1, stream):
    # an unused state argument is an empty array (never touched: its flag is off); not s itself,
    # which the simulator would copy back over the updated s
    unused = s[:0]
    _launch(_rmsprop, p, stream, dev(p), dev(g), dev(s), dev(unused if mg is None else mg),
            dev(unused if b is None else b), _f(lr), _f(rho), _f(eps), _f(mu), _f(l2), _f(l1), mg is not None,
            b is not None)


def rmsprop_step(p, g, s, lr, rho, eps, l2, l1, stream=0):
    _rms(p, g, s, None, None, lr, rho, eps, 0.0, l2, l1, stream)


def rmsprop_centered_step(p, g, s, mg, lr, rho, eps, l2, l1, stream=0):
    _rms(p, g, s, mg, None, lr, rho, eps, 0.0, l2, l1, stream)


def rmsprop_momentum_step(p, g, s, b, lr, rho, eps, mu, l2, l1, stream=0):
    _rms(p, g, s, None, b, lr, rho, eps, mu, l2, l1, stream)


def rmsprop_centered_momentum_step(p, g, s, mg, b, lr, rho, eps, mu, l2, l1, stream=0):
    _rms(p, g, s, mg, b, lr, rho, eps, mu, l2, l1, stream)


def adam_step(p, g, m, v, lr, beta1, beta2, eps, bc1, bc2, l2, l1, decoupled_wd, stream=0):
    _launch(_adam, p, stream, dev(p), dev(g), dev(m), dev(v), dev(v[:0]), _f(lr), _f(beta1), _f(beta2), _f(eps), _f(bc1),
            _f(bc2), _f(l2), _f(l1), _f(decoupled_wd), False)


def adam_amsgrad_step(p, g, m, v, vmax, lr, beta1, beta2, eps, bc1, bc2, l2, l1, decoupled_wd, stream=0):
    _launch(_adam, p, stream, dev(p), dev(g), dev(m), dev(v), dev(vmax), _f(lr), _f(beta1), _f(beta2), _f(eps),
            _f(bc1), _f(bc2), _f(l2), _f(l1), _f(decoupled_wd), True)
