"""Max and average pooling kernels (reference), NCHW. See docs/KERNELS.md for the contract.

Output size (PyTorch's rule): P = (H + 2*ph - dil_h*(kh - 1) - 1) / sh + 1, rounded down, or up
with ceil_mode, where a last window that would start beyond the input and its left/top padding
is dropped (`out_size`); Q likewise. dil_h, dil_w: MaxPool's dilation (the distance between taps).
Each loop below runs over the kh*kw window offsets and handles every output position at once
with a strided slice of the padded input (padded further at the bottom/right as far as a
ceil-mode window reaches; those taps are never real).

Max-pool tie rule: the first maximum in the window's row-major scan order wins (strict >), so
every backend picks the same index. NaN propagates as in PyTorch: a tap is taken when it is greater
or when it is NaN, so a window holding a NaN gives NaN and its index is the LAST NaN in scan order
(every NaN replaces the one before; nothing compares greater than NaN), and backward sends the
gradient there. Padding never wins: the layer guarantees padding <= kernel/2, so every window holds
at least one real element.

Tap form (`maxpool2d_taps_*`): the same choice of maximum, named by its place in its own window,
tap = r*kw + s (row r, column s of the kh x kw window), one uint8 per output instead of an int64
flat index (windows of at most 256 taps). A layer that does not hand the indices to its user
(MaxPool2d(return_indices=False)) stores these: the index array is then a quarter of the pooled
output rather than twice it (2x2 pooling's forward + backward: 42 bytes an output instead of 56).
The backward needs the window geometry to turn a tap back into a position.

Average-pool divisor: divisor_override when nonzero (PyTorch's option: every window divides by it);
else with count_include_pad, the window's taps inside the padded input (kh*kw except for a
ceil-mode window hanging over the bottom/right padding); without, its real taps.
"""
import numpy as np

OPS = ["maxpool2d_fwd", "maxpool2d_bwd", "maxpool2d_taps_fwd", "maxpool2d_taps_bwd", "avgpool2d_fwd", "avgpool2d_bwd"]


def out_size(n, k, s, p, d=1, ceil_mode=False):
    """Output extent of a window of k taps d apart, stride s, padding p over n inputs."""
    span = d * (k - 1) + 1
    out = (n + 2 * p - span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:   # the last window would start in the bottom padding
        out -= 1
    return out


def _window(a, r, s, sh, sw, p, q):
    # a: (N, C, Hp, Wp) padded; the (r, s) offset of every window: (N, C, P, Q)
    return a[:, :, r:r + sh * (p - 1) + 1:sh, s:s + sw * (q - 1) + 1:sw]


def _padded_extent(n, k, s, pad, out, d=1):
    # rows of the padded input the windows touch: the symmetric padding, or further for ceil mode
    return max(n + 2 * pad, (out - 1) * s + d * (k - 1) + 1)


def maxpool2d_fwd_ref(x, y, argmax, kh, kw, sh, sw, ph, pw, ceil_mode=False, dil_h=1, dil_w=1):
    # x: (N, C, H, W); y, argmax: (N, C, P, Q); argmax = flat index h*W + w into the H*W plane
    dh, dw = dil_h, dil_w
    n, c, h, w = x.shape
    p, q = y.shape[2], y.shape[3]
    hp, wp = _padded_extent(h, kh, sh, ph, p, dh), _padded_extent(w, kw, sw, pw, q, dw)
    xp = np.full((n, c, hp, wp), -np.inf, dtype=x.dtype)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    real = np.zeros(xp.shape[2:], dtype=bool)
    real[ph:ph + h, pw:pw + w] = True
    rows = np.arange(p).reshape(p, 1) * sh - ph      # (P, 1) top row of each window in x
    cols = np.arange(q).reshape(1, q) * sw - pw      # (1, Q) left column of each window in x
    best = np.full(y.shape, -np.inf, dtype=x.dtype)
    best_idx = np.full(y.shape, -1, dtype=np.int64)
    for r in range(kh):
        for s in range(kw):
            v = _window(xp, r * dh, s * dw, sh, sw, p, q)
            ok = _window(real[None, None], r * dh, s * dw, sh, sw, p, q)
            # strict >, or NaN (propagated, the last one wins), or the first real element (so an
            # all -inf window still gets an index)
            take = ok & ((v > best) | np.isnan(v) | (best_idx < 0))
            best = np.where(take, v, best)
            best_idx = np.where(take, (rows + r * dh) * w + (cols + s * dw), best_idx)
    y[...] = best
    argmax[...] = best_idx


def maxpool2d_bwd_ref(dy, argmax, dx):
    # dy, argmax: (N, C, P, Q); dx: (N, C, H, W), zeroed then each dy added at its argmax
    # (overlapping windows may pick the same element, so this is a scatter-ADD).
    n, c, h, w = dx.shape
    plane = np.arange(n * c, dtype=np.int64).reshape(n, c, 1, 1) * (h * w)
    flat = np.bincount((plane + argmax).ravel(), weights=dy.ravel().astype(np.float64), minlength=dx.size)
    dx[...] = flat.reshape(dx.shape)


def _window_origins(p, q, sh, sw, ph, pw):
    # (P, 1) and (1, Q): the top row and left column of each window
    return (np.arange(p) * sh - ph)[:, None], (np.arange(q) * sw - pw)[None, :]


def flat_to_taps(am, h, w, kh, kw, sh, sw, ph, pw, dil_h=1, dil_w=1):
    """(..., P, Q) flat indices h*W + w of each window's maximum -> the window tap r*kw + s (uint8)."""
    h0, w0 = _window_origins(am.shape[-2], am.shape[-1], sh, sw, ph, pw)
    r, s = (am // w - h0) // dil_h, (am % w - w0) // dil_w
    return (r * kw + s).astype(np.uint8)


def taps_to_flat(taps, h, w, kh, kw, sh, sw, ph, pw, dil_h=1, dil_w=1):
    """The inverse of flat_to_taps: PyTorch's flat indices h*W + w (int64)."""
    h0, w0 = _window_origins(taps.shape[-2], taps.shape[-1], sh, sw, ph, pw)
    t = taps.astype(np.int64)
    return (h0 + (t // kw) * dil_h) * w + w0 + (t % kw) * dil_w


def maxpool2d_taps_fwd_ref(x, y, taps, kh, kw, sh, sw, ph, pw, ceil_mode=False, dil_h=1, dil_w=1):
    # x: (N, C, H, W); y, taps: (N, C, P, Q); taps uint8 = r*kw + s of the maximum maxpool2d_fwd_ref picks
    am = np.empty(y.shape, np.int64)
    maxpool2d_fwd_ref(x, y, am, kh, kw, sh, sw, ph, pw, ceil_mode, dil_h, dil_w)
    taps[...] = flat_to_taps(am, x.shape[2], x.shape[3], kh, kw, sh, sw, ph, pw, dil_h, dil_w)


def maxpool2d_taps_bwd_ref(dy, taps, dx, kh, kw, sh, sw, ph, pw, ceil_mode=False, dil_h=1, dil_w=1):
    # dy, taps: (N, C, P, Q); dx: (N, C, H, W), zeroed then each dy added at its tap's position.
    # A tap that is not a real tap of its window (r >= kh, or in the padding) raises, naming the
    # first such flat position, as an argmax outside its plane does for maxpool2d_bwd.
    h, w = dx.shape[2], dx.shape[3]
    h0, w0 = _window_origins(taps.shape[2], taps.shape[3], sh, sw, ph, pw)
    t = taps.astype(np.int64)
    rows, cols = h0 + (t // kw) * dil_h, w0 + (t % kw) * dil_w
    bad = np.flatnonzero((t >= kh * kw) | (rows < 0) | (rows >= h) | (cols < 0) | (cols >= w))
    if bad.size:
        raise ValueError(f"maxpool2d_taps_bwd(taps): expected window taps r*kw + s of a tap inside the image "
                         f"(kh={kh}, kw={kw}), got {int(taps.flat[bad[0]])} at flat position {int(bad[0])}")
    maxpool2d_bwd_ref(dy, rows * w + cols, dx)


def _counts(n, k, s, pad, out, count_include_pad):
    # taps of each window along one axis that count in the divisor: (out,)
    start = np.arange(out) * s - pad
    if count_include_pad:
        return np.minimum(start + k, n + pad) - start
    return np.minimum(start + k, n) - np.maximum(start, 0)


def _divisor(h, w, kh, kw, sh, sw, ph, pw, p, q, count_include_pad, divisor_override=0):
    if divisor_override:
        return np.full((p, q), float(divisor_override))
    return np.outer(_counts(h, kh, sh, ph, p, count_include_pad), _counts(w, kw, sw, pw, q, count_include_pad))


def avgpool2d_fwd_ref(x, y, kh, kw, sh, sw, ph, pw, ceil_mode=False, count_include_pad=True, divisor_override=0):
    # x: (N, C, H, W); y: (N, C, P, Q)
    n, c, h, w = x.shape
    p, q = y.shape[2], y.shape[3]
    xp = np.zeros((n, c, _padded_extent(h, kh, sh, ph, p), _padded_extent(w, kw, sw, pw, q)), dtype=x.dtype)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    acc = np.zeros(y.shape, dtype=x.dtype)
    for r in range(kh):
        for s in range(kw):
            acc += _window(xp, r, s, sh, sw, p, q)
    y[...] = acc / _divisor(h, w, kh, kw, sh, sw, ph, pw, p, q, count_include_pad, divisor_override)


def avgpool2d_bwd_ref(dy, dx, kh, kw, sh, sw, ph, pw, ceil_mode=False, count_include_pad=True, divisor_override=0):
    # dy: (N, C, P, Q); dx: (N, C, H, W), overwritten
    n, c, h, w = dx.shape
    p, q = dy.shape[2], dy.shape[3]
    dxp = np.zeros((n, c, _padded_extent(h, kh, sh, ph, p), _padded_extent(w, kw, sw, pw, q)), dtype=dx.dtype)
    g = dy / _divisor(h, w, kh, kw, sh, sw, ph, pw, p, q, count_include_pad, divisor_override)
    for r in range(kh):
        for s in range(kw):
            _window(dxp, r, s, sh, sw, p, q)[...] += g
    dx[...] = dxp[:, :, ph:ph + h, pw:pw + w]
