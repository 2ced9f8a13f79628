"""conv2d with Numba: per-image im2col / col2im as parallel Numba loops, the matrix products
through NumPy's BLAS (a hand-written GEMM in Numba would be far slower). docs/KERNELS.md."""
import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True)
def _im2col(x, col, r_, s_, sh, sw, ph, pw, p_, q_):
    # x: (C, H, W) -> col: (C*R*S, P*Q)
    c_, h, w = x.shape
    for row in nb.prange(c_ * r_ * s_):
        c = row // (r_ * s_)
        r = (row // s_) % r_
        s = row % s_
        for i in range(p_):
            hi = i * sh - ph + r
            for j in range(q_):
                wi = j * sw - pw + s
                if 0 <= hi < h and 0 <= wi < w:
                    col[row, i * q_ + j] = x[c, hi, wi]
                else:
                    col[row, i * q_ + j] = 0


@nb.njit(parallel=True, cache=True)
def _col2im(col, dx, r_, s_, sh, sw, ph, pw, p_, q_):
    # scatter-add col (C*R*S, P*Q) into dx (C, H, W); parallel over channels, so no two threads
    # write the same element
    c_, h, w = dx.shape
    for c in nb.prange(c_):
        dx[c] = 0
        for r in range(r_):
            for s in range(s_):
                row = (c * r_ + r) * s_ + s
                for i in range(p_):
                    hi = i * sh - ph + r
                    if hi < 0 or hi >= h:
                        continue
                    for j in range(q_):
                        wi = j * sw - pw + s
                        if 0 <= wi < w:
                            dx[c, hi, wi] += col[row, i * q_ + j]


def _geometry(x_shape, w_shape, sh, sw, ph, pw):
    _, _, h, w = x_shape
    _, _, r, s = w_shape
    return r, s, (h + 2 * ph - r) // sh + 1, (w + 2 * pw - s) // sw + 1


def conv2d_fwd(x, w, b, y, sh, sw, ph, pw, relu):
    n, c = x.shape[:2]
    k = w.shape[0]
    r, s, p, q = _geometry(x.shape, w.shape, sh, sw, ph, pw)
    col = np.empty((c * r * s, p * q), x.dtype)
    w2 = w.reshape(k, -1)
    for i in range(n):
        _im2col(x[i], col, r, s, sh, sw, ph, pw, p, q)
        out = y[i].reshape(k, p * q)
        np.matmul(w2, col, out=out)
        out += b[:, None]
        if relu:
            np.maximum(out, 0, out=out)


def conv2d_bwd_data(dy, w, dx, sh, sw, ph, pw):
    n, c = dx.shape[:2]
    k = w.shape[0]
    r, s, p, q = _geometry(dx.shape, w.shape, sh, sw, ph, pw)
    w2t = w.reshape(k, -1).T
    col = np.empty((c * r * s, p * q), dx.dtype)
    for i in range(n):
        np.matmul(w2t, dy[i].reshape(k, p * q), out=col)
        _col2im(col, dx[i], r, s, sh, sw, ph, pw, p, q)


def conv2d_bwd_weight(x, dy, dw, db, sh, sw, ph, pw):
    n, c = x.shape[:2]
    k = dw.shape[0]
    r, s, p, q = _geometry(x.shape, dw.shape, sh, sw, ph, pw)
    col = np.empty((c * r * s, p * q), x.dtype)
    dw2 = dw.reshape(k, -1)
    for i in range(n):
        _im2col(x[i], col, r, s, sh, sw, ph, pw, p, q)
        g = dy[i].reshape(k, p * q)
        dw2 += g @ col.T
        db += g.sum(axis=1)
