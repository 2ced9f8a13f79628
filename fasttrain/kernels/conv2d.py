"""2-D convolution (reference), NCHW, by im2col + one matrix product per group.

x: (N, C, H, W), w: (K, C/G, R, S), b: (K,), y/dy: (N, K, P, Q) with G = groups,
P = (H + 2 ph - dil_h (R - 1) - 1) // sh + 1, Q = (W + 2 pw - dil_w (S - 1) - 1) // sw + 1
(dil_h, dil_w: the dilation, the distance between kernel taps). Group g maps input channels
[g C/G, (g+1) C/G) to output channels [g K/G, (g+1) K/G): groups = C with K = C is the depthwise
convolution of MobileNet (Howard et al. 2017), groups = 1 the ordinary one.
"""
import numpy as np

OPS = ["conv2d_fwd", "conv2d_bwd_data", "conv2d_bwd_weight"]


def out_size(h, w, r, s, sh, sw, ph, pw, dil_h=1, dil_w=1):
    return (h + 2 * ph - dil_h * (r - 1) - 1) // sh + 1, (w + 2 * pw - dil_w * (s - 1) - 1) // sw + 1


def im2col_ref(x, r, s, sh, sw, ph, pw, dil_h=1, dil_w=1):
    """cols: (N, C, R, S, P, Q); cols[n, c, i, j] = padded x[n, c, dil_h*i + sh*p, dil_w*j + sw*q]."""
    n, c, h, w = x.shape
    p, q = out_size(h, w, r, s, sh, sw, ph, pw, dil_h, dil_w)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((n, c, r, s, p, q), x.dtype)
    for i in range(r):
        for j in range(s):
            cols[:, :, i, j] = xp[:, :, dil_h * i:dil_h * i + sh * (p - 1) + 1:sh, dil_w * j:dil_w * j + sw * (q - 1) + 1:sw]
    return cols


def col2im_ref(cols, h, w, sh, sw, ph, pw, dil_h=1, dil_w=1):
    """Adjoint of im2col_ref: scatter-add cols (N, C, R, S, P, Q) into (N, C, H, W)."""
    n, c, r, s, p, q = cols.shape
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), cols.dtype)
    for i in range(r):
        for j in range(s):
            xp[:, :, dil_h * i:dil_h * i + sh * (p - 1) + 1:sh, dil_w * j:dil_w * j + sw * (q - 1) + 1:sw] += cols[:, :, i, j]
    return xp[:, :, ph:ph + h, pw:pw + w]


def _grouped_cols(x, w, sh, sw, ph, pw, dil_h, dil_w, groups):
    # cols viewed per group: (N, G, C/G * R * S, P * Q)
    _, _, r, s = w.shape
    cols = im2col_ref(x, r, s, sh, sw, ph, pw, dil_h, dil_w)
    n, c, _, _, p, q = cols.shape
    return cols.reshape(n, groups, c // groups * r * s, p * q)


def conv2d_fwd_ref(x, w, b, y, sh, sw, ph, pw, relu, dil_h=1, dil_w=1, groups=1):
    k = w.shape[0]
    cols = _grouped_cols(x, w, sh, sw, ph, pw, dil_h, dil_w, groups)      # (N, G, CRS/G, PQ)
    n, _, _, pq = cols.shape
    out = np.matmul(w.reshape(groups, k // groups, -1), cols)       # (N, G, K/G, PQ)
    out = out.reshape(n, k, pq) + b.reshape(1, k, 1)
    if relu:
        np.maximum(out, 0, out=out)
    y[...] = out.reshape(y.shape)


def conv2d_bwd_data_ref(dy, w, dx, sh, sw, ph, pw, dil_h=1, dil_w=1, groups=1):
    k, cg, r, s = w.shape
    n, _, p, q = dy.shape
    wg = w.reshape(groups, k // groups, cg * r * s)
    cols = np.matmul(wg.transpose(0, 2, 1), dy.reshape(n, groups, k // groups, p * q))  # (N, G, CRS/G, PQ)
    dx[...] = col2im_ref(cols.reshape(n, cg * groups, r, s, p, q), dx.shape[2], dx.shape[3], sh, sw, ph, pw, dil_h, dil_w)


def conv2d_bwd_weight_ref(x, dy, dw, db, sh, sw, ph, pw, dil_h=1, dil_w=1, groups=1):
    k = dw.shape[0]
    cols = _grouped_cols(x, dw, sh, sw, ph, pw, dil_h, dil_w, groups)    # (N, G, CRS/G, PQ)
    n, _, _, pq = cols.shape
    g = dy.reshape(n, groups, k // groups, pq)
    # per group one product over all images: (K/G, N*PQ) @ (N*PQ, CRS/G)
    dw += np.einsum("ngkl,ngcl->gkc", g, cols, optimize=True).reshape(dw.shape)
    db += dy.sum(axis=(0, 2, 3))
