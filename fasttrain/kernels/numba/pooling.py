"""Max and average pooling with Numba, parallel over the N*C planes (docs/KERNELS.md)."""
import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True)
def _max_fwd(x, y, argmax, kh, kw, sh, sw, ph, pw):
    nc, h, w = x.shape
    _, p, q = y.shape
    for plane in nb.prange(nc):
        for i in range(p):
            for j in range(q):
                best = -np.inf
                best_idx = -1
                for r in range(kh):
                    hi = i * sh - ph + r
                    if hi < 0 or hi >= h:
                        continue
                    for s in range(kw):
                        wi = j * sw - pw + s
                        if wi < 0 or wi >= w:
                            continue
                        v = x[plane, hi, wi]
                        if v > best or best_idx < 0:
                            best = v
                            best_idx = hi * w + wi
                y[plane, i, j] = best
                argmax[plane, i, j] = best_idx


@nb.njit(parallel=True, cache=True)
def _max_bwd(dy, argmax, dx):
    nc, hw = dx.shape
    for plane in nb.prange(nc):
        for k in range(hw):
            dx[plane, k] = 0
        for k in range(argmax.shape[1]):
            dx[plane, argmax[plane, k]] += dy[plane, k]


@nb.njit(parallel=True, cache=True)
def _avg_fwd(x, y, kh, kw, sh, sw, ph, pw):
    nc, h, w = x.shape
    _, p, q = y.shape
    inv = 1.0 / (kh * kw)
    for plane in nb.prange(nc):
        for i in range(p):
            for j in range(q):
                acc = 0.0
                for r in range(kh):
                    hi = i * sh - ph + r
                    if hi < 0 or hi >= h:
                        continue
                    for s in range(kw):
                        wi = j * sw - pw + s
                        if 0 <= wi < w:
                            acc += x[plane, hi, wi]
                y[plane, i, j] = acc * inv


@nb.njit(parallel=True, cache=True)
def _avg_bwd(dy, dx, kh, kw, sh, sw, ph, pw):
    nc, h, w = dx.shape
    _, p, q = dy.shape
    inv = 1.0 / (kh * kw)
    for plane in nb.prange(nc):
        for i in range(h):
            for j in range(w):
                dx[plane, i, j] = 0
        for i in range(p):
            for j in range(q):
                g = dy[plane, i, j] * inv
                for r in range(kh):
                    hi = i * sh - ph + r
                    if hi < 0 or hi >= h:
                        continue
                    for s in range(kw):
                        wi = j * sw - pw + s
                        if 0 <= wi < w:
                            dx[plane, hi, wi] += g


def _planes(a):
    return a.reshape(-1, a.shape[-2], a.shape[-1])


def maxpool2d_fwd(x, y, argmax, kh, kw, sh, sw, ph, pw):
    _max_fwd(_planes(x), _planes(y), _planes(argmax), kh, kw, sh, sw, ph, pw)


def maxpool2d_bwd(dy, argmax, dx):
    nc = dx.shape[0] * dx.shape[1]
    _max_bwd(dy.reshape(nc, -1), argmax.reshape(nc, -1), dx.reshape(nc, -1))


def avgpool2d_fwd(x, y, kh, kw, sh, sw, ph, pw):
    _avg_fwd(_planes(x), _planes(y), kh, kw, sh, sw, ph, pw)


def avgpool2d_bwd(dy, dx, kh, kw, sh, sw, ph, pw):
    _avg_bwd(_planes(dy), _planes(dx), kh, kw, sh, sw, ph, pw)
