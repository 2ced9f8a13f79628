"""2-D convolution (reference), NCHW, by im2col + one matrix product.

x: (N, C, H, W), w: (K, C, R, S), b: (K,), y/dy: (N, K, P, Q) with
P = (H + 2 ph - R) // sh + 1, Q = (W + 2 pw - S) // sw + 1.
"""
import numpy as np

OPS = ["conv2d_fwd", "conv2d_bwd_data", "conv2d_bwd_weight"]


def out_size(h, w, r, s, sh, sw, ph, pw):
    return (h + 2 * ph - r) // sh + 1, (w + 2 * pw - s) // sw + 1


def im2col_ref(x, r, s, sh, sw, ph, pw):
    """cols: (N, C, R, S, P, Q); cols[n, c, i, j] = padded x[n, c, i + sh*p, j + sw*q]."""
    n, c, h, w = x.shape
    p, q = out_size(h, w, r, s, sh, sw, ph, pw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((n, c, r, s, p, q), x.dtype)
    for i in range(r):
        for j in range(s):
            cols[:, :, i, j] = xp[:, :, i:i + sh * (p - 1) + 1:sh, j:j + sw * (q - 1) + 1:sw]
    return cols


def col2im_ref(cols, h, w, sh, sw, ph, pw):
    """Adjoint of im2col_ref: scatter-add cols (N, C, R, S, P, Q) into (N, C, H, W)."""
    n, c, r, s, p, q = cols.shape
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), cols.dtype)
    for i in range(r):
        for j in range(s):
            xp[:, :, i:i + sh * (p - 1) + 1:sh, j:j + sw * (q - 1) + 1:sw] += cols[:, :, i, j]
    return xp[:, :, ph:ph + h, pw:pw + w]


def conv2d_fwd_ref(x, w, b, y, sh, sw, ph, pw, relu):
    k, c, r, s = w.shape
    cols = im2col_ref(x, r, s, sh, sw, ph, pw)                  # (N, C, R, S, P, Q)
    n, _, _, _, p, q = cols.shape
    out = np.matmul(w.reshape(k, -1), cols.reshape(n, c * r * s, p * q))  # (N, K, PQ)
    out += b.reshape(1, k, 1)
    if relu:
        np.maximum(out, 0, out=out)
    y[...] = out.reshape(n, k, p, q)


def conv2d_bwd_data_ref(dy, w, dx, sh, sw, ph, pw):
    k, c, r, s = w.shape
    n, _, p, q = dy.shape
    cols = np.matmul(w.reshape(k, -1).T, dy.reshape(n, k, p * q))  # (N, CRS, PQ)
    dx[...] = col2im_ref(cols.reshape(n, c, r, s, p, q), dx.shape[2], dx.shape[3], sh, sw, ph, pw)


def conv2d_bwd_weight_ref(x, dy, dw, db, sh, sw, ph, pw):
    k, c, r, s = dw.shape
    n, _, p, q = dy.shape
    cols = im2col_ref(x, r, s, sh, sw, ph, pw).reshape(n, c * r * s, p * q)
    g = dy.reshape(n, k, p * q)
    # one matrix product over all images: (K, N*PQ) @ (N*PQ, CRS)
    dw += (g.transpose(1, 0, 2).reshape(k, -1) @ cols.transpose(1, 0, 2).reshape(c * r * s, -1).T).reshape(dw.shape)
    db += g.sum(axis=(0, 2))
