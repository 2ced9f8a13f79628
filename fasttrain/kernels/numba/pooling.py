"""Max and average pooling with Numba, parallel over the N*C planes (docs/KERNELS.md). Output
sizes come from y (ceil mode included); max pooling's taps lie dh, dw apart; the average's
divisor follows count_include_pad (see fasttrain/kernels/pooling.py)."""
import numba as nb
import numpy as np


@nb.njit(inline="always")
def _window_max(x, plane, i, j, kh, kw, sh, sw, ph, pw, dh, dw):
    """The maximum of window (i, j) and its tap (r, s); the rule of fasttrain/kernels/pooling.py:
    strict >, a NaN always taken (so the last NaN wins), starting at the first real tap."""
    h, w = x.shape[1], x.shape[2]
    best = -np.inf
    br, bs = -1, -1
    for r in range(kh):
        hi = i * sh - ph + r * dh
        if hi < 0 or hi >= h:
            continue
        for s in range(kw):
            wi = j * sw - pw + s * dw
            if wi < 0 or wi >= w:
                continue
            v = x[plane, hi, wi]
            if v > best or v != v or br < 0:
                best = v
                br, bs = r, s
    return best, br, bs


@nb.njit(parallel=True, cache=True)
def _max_fwd(x, y, argmax, kh, kw, sh, sw, ph, pw, dh, dw):
    w = x.shape[2]
    nc, p, q = y.shape
    for plane in nb.prange(nc):
        for i in range(p):
            for j in range(q):
                best, r, s = _window_max(x, plane, i, j, kh, kw, sh, sw, ph, pw, dh, dw)
                y[plane, i, j] = best
                argmax[plane, i, j] = (i * sh - ph + r * dh) * w + j * sw - pw + s * dw


@nb.njit(parallel=True, cache=True)
def _max_fwd_taps(x, y, taps, kh, kw, sh, sw, ph, pw, dh, dw):
    nc, p, q = y.shape
    for plane in nb.prange(nc):
        for i in range(p):
            for j in range(q):
                best, r, s = _window_max(x, plane, i, j, kh, kw, sh, sw, ph, pw, dh, dw)
                y[plane, i, j] = best
                taps[plane, i, j] = r * kw + s


@nb.njit(parallel=True, cache=True)
def _max_bwd(dy, argmax, dx):
    nc, hw = dx.shape
    for plane in nb.prange(nc):
        for k in range(hw):
            dx[plane, k] = 0
        for k in range(argmax.shape[1]):
            dx[plane, argmax[plane, k]] += dy[plane, k]


@nb.njit(parallel=True, cache=True)
def _max_bwd_taps(dy, taps, dx, kh, kw, sh, sw, ph, pw, dh, dw, bad):
    # bad[plane]: the first flat position (within the plane) of a tap that is not a real tap of
    # its window, else -1 (raising inside a parallel loop is not an option in Numba)
    nc, h, w = dx.shape
    _, p, q = dy.shape
    for plane in nb.prange(nc):
        bad[plane] = -1
        for i in range(h):
            for j in range(w):
                dx[plane, i, j] = 0
        for i in range(p):
            for j in range(q):
                t = np.int64(taps[plane, i, j])
                r, s = t // kw, t % kw
                hi, wi = i * sh - ph + r * dh, j * sw - pw + s * dw
                if r >= kh or hi < 0 or hi >= h or wi < 0 or wi >= w:
                    if bad[plane] < 0:
                        bad[plane] = i * q + j
                    continue
                dx[plane, hi, wi] += dy[plane, i, j]


@nb.njit(inline="always")
def _divisor(h0, w0, h, w, kh, kw, ph, pw, include_pad, override):
    if override != 0:
        return override
    if include_pad:
        return (min(h0 + kh, h + ph) - h0) * (min(w0 + kw, w + pw) - w0)
    return (min(h0 + kh, h) - max(h0, 0)) * (min(w0 + kw, w) - max(w0, 0))


@nb.njit(parallel=True, cache=True)
def _avg_fwd(x, y, kh, kw, sh, sw, ph, pw, include_pad, override):
    nc, h, w = x.shape
    _, p, q = y.shape
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
                y[plane, i, j] = acc / _divisor(i * sh - ph, j * sw - pw, h, w, kh, kw, ph, pw, include_pad, override)


@nb.njit(parallel=True, cache=True)
def _avg_bwd(dy, dx, kh, kw, sh, sw, ph, pw, include_pad, override):
    nc, h, w = dx.shape
    _, p, q = dy.shape
    for plane in nb.prange(nc):
        for i in range(h):
            for j in range(w):
                dx[plane, i, j] = 0
        for i in range(p):
            for j in range(q):
                g = dy[plane, i, j] / _divisor(i * sh - ph, j * sw - pw, h, w, kh, kw, ph, pw, include_pad, override)
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


def maxpool2d_fwd(x, y, argmax, kh, kw, sh, sw, ph, pw, ceil_mode=False, dil_h=1, dil_w=1):
    _max_fwd(_planes(x), _planes(y), _planes(argmax), kh, kw, sh, sw, ph, pw, dil_h, dil_w)


def maxpool2d_bwd(dy, argmax, dx):
    nc = dx.shape[0] * dx.shape[1]
    _max_bwd(dy.reshape(nc, -1), argmax.reshape(nc, -1), dx.reshape(nc, -1))


def maxpool2d_taps_fwd(x, y, taps, kh, kw, sh, sw, ph, pw, ceil_mode=False, dil_h=1, dil_w=1):
    _max_fwd_taps(_planes(x), _planes(y), _planes(taps), kh, kw, sh, sw, ph, pw, dil_h, dil_w)


def maxpool2d_taps_bwd(dy, taps, dx, kh, kw, sh, sw, ph, pw, ceil_mode=False, dil_h=1, dil_w=1):
    bad = np.empty(dx.shape[0] * dx.shape[1], np.int64)
    _max_bwd_taps(_planes(dy), _planes(taps), _planes(dx), kh, kw, sh, sw, ph, pw, dil_h, dil_w, bad)
    planes = np.flatnonzero(bad >= 0)
    if planes.size:
        pos = int(planes[0] * dy.shape[2] * dy.shape[3] + bad[planes[0]])
        raise ValueError(f"maxpool2d_taps_bwd(taps): expected window taps r*kw + s of a tap inside the image "
                         f"(kh={kh}, kw={kw}), got {int(taps.flat[pos])} at flat position {pos}")


def avgpool2d_fwd(x, y, kh, kw, sh, sw, ph, pw, ceil_mode=False, count_include_pad=True, divisor_override=0):
    _avg_fwd(_planes(x), _planes(y), kh, kw, sh, sw, ph, pw, bool(count_include_pad), int(divisor_override))


def avgpool2d_bwd(dy, dx, kh, kw, sh, sw, ph, pw, ceil_mode=False, count_include_pad=True, divisor_override=0):
    _avg_bwd(_planes(dy), _planes(dx), kh, kw, sh, sw, ph, pw, bool(count_include_pad), int(divisor_override))
