"""Max and average pooling kernels (reference), NCHW. See docs/KERNELS.md for the contract.

Output size P = (H + 2*ph - kh) // sh + 1 (floor), Q likewise. Each loop below runs over the
kh*kw window offsets and handles every output position at once with a strided slice of the
padded input.

Max-pool tie rule: the first maximum in the window's row-major scan order wins (strict >), so
every backend picks the same index. Padding never wins: the layer guarantees padding <= kernel/2,
so every window holds at least one real element.
"""
import numpy as np

OPS = ["maxpool2d_fwd", "maxpool2d_bwd", "avgpool2d_fwd", "avgpool2d_bwd"]


def _window(a, r, s, sh, sw, p, q):
    # a: (N, C, Hp, Wp) padded; the (r, s) element of every window: (N, C, P, Q)
    return a[:, :, r:r + sh * (p - 1) + 1:sh, s:s + sw * (q - 1) + 1:sw]


def maxpool2d_fwd_ref(x, y, argmax, kh, kw, sh, sw, ph, pw):
    # x: (N, C, H, W); y, argmax: (N, C, P, Q); argmax = flat index h*W + w into the H*W plane
    n, c, h, w = x.shape
    p, q = y.shape[2], y.shape[3]
    xp = np.full((n, c, h + 2 * ph, w + 2 * pw), -np.inf, dtype=x.dtype)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    real = np.zeros(xp.shape[2:], dtype=bool)
    real[ph:ph + h, pw:pw + w] = True
    rows = np.arange(p).reshape(p, 1) * sh - ph      # (P, 1) top row of each window in x
    cols = np.arange(q).reshape(1, q) * sw - pw      # (1, Q) left column of each window in x
    best = np.full(y.shape, -np.inf, dtype=x.dtype)
    best_idx = np.full(y.shape, -1, dtype=np.int64)
    for r in range(kh):
        for s in range(kw):
            v = _window(xp, r, s, sh, sw, p, q)
            ok = _window(real[None, None], r, s, sh, sw, p, q)
            # strict >, or the first real element (so an all -inf window still gets an index)
            take = ok & ((v > best) | (best_idx < 0))
            best = np.where(take, v, best)
            best_idx = np.where(take, (rows + r) * w + (cols + s), best_idx)
    y[...] = best
    argmax[...] = best_idx


def maxpool2d_bwd_ref(dy, argmax, dx):
    # dy, argmax: (N, C, P, Q); dx: (N, C, H, W), zeroed then each dy added at its argmax
    # (overlapping windows may pick the same element, so this is a scatter-ADD).
    n, c, h, w = dx.shape
    plane = np.arange(n * c, dtype=np.int64).reshape(n, c, 1, 1) * (h * w)
    flat = np.bincount((plane + argmax).ravel(), weights=dy.ravel().astype(np.float64), minlength=dx.size)
    dx[...] = flat.reshape(dx.shape)


def avgpool2d_fwd_ref(x, y, kh, kw, sh, sw, ph, pw):
    # x: (N, C, H, W); y: (N, C, P, Q); divisor kh*kw always (padding counts, count_include_pad)
    n, c, h, w = x.shape
    p, q = y.shape[2], y.shape[3]
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    acc = np.zeros(y.shape, dtype=x.dtype)
    for r in range(kh):
        for s in range(kw):
            acc += _window(xp, r, s, sh, sw, p, q)
    y[...] = acc / (kh * kw)


def avgpool2d_bwd_ref(dy, dx, kh, kw, sh, sw, ph, pw):
    # dy: (N, C, P, Q); dx: (N, C, H, W), overwritten
    n, c, h, w = dx.shape
    p, q = dy.shape[2], dy.shape[3]
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dx.dtype)
    g = dy / (kh * kw)
    for r in range(kh):
        for s in range(kw):
            _window(dxp, r, s, sh, sw, p, q)[...] += g
    dx[...] = dxp[:, :, ph:ph + h, pw:pw + w]
