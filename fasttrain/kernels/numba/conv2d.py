"""conv2d with Numba (docs/KERNELS.md): im2col / col2im in Numba, the products in sgemm.

Each Numba thread takes a contiguous chunk of images; per image it unfolds x into its own buffer
col (C*R*S, P*Q), multiplies with single-threaded BLAS (np.dot inside njit calls scipy's sgemm; a
GEMM written in Numba is far slower) and applies the bias/ReLU epilogue, all inside one parallel
region. Measured alternatives on 2 threads (N=64, C=K=64, 32x32, 3x3), forward:
  per-image prange im2col + NumPy matmul (the first version)          2540 ms
  batch-blocked im2col (C*R*S, B*P*Q) + one NumPy matmul per block      773 ms
  this (one parallel region, per-thread im2col + sgemm)                  84 ms  (C++ 35 ms)
The blocked version lost to thread hand-offs: Numba's OpenMP pool and OpenBLAS's pool spin-wait
for each other between the im2col and the GEMM of every block.

Grouped convolutions run the unfold and the product once per group on the group's channel slices
(w2 rows g*K/G.., x channels g*C/G..); dilation (dlh, dlw) spaces the taps in the unfold.
"""
import numba as nb
import numpy as np

@nb.njit(inline="always")
def _valid_range(sw, pw, s, w, q_):
    # output columns j with 0 <= j*sw - pw + s < w, as [lo, hi): the inner loops then run
    # branch-free and vectorize
    lo = 0
    if pw - s > 0:
        lo = (pw - s + sw - 1) // sw
    hi = 0
    if w - 1 + pw - s >= 0:
        hi = (w - 1 + pw - s) // sw + 1
    return min(lo, q_), max(min(hi, q_), min(lo, q_))


# -- per-thread GEMM: one parallel region for the whole call ----------------------------------------
# Handing work back and forth between Numba's OpenMP threads and OpenBLAS's own threads costs more
# than the work on 2 cores (both pools spin-wait for the other: measured 2.5x the sum of the
# parts). So each Numba thread takes a chunk of images and calls single-threaded BLAS (np.dot in
# njit is scipy's sgemm) on its own im2col buffer; BLAS threads are pinned to 1 during the call.

@nb.njit(parallel=True, cache=True)
def _fwd(x, w2, b, y, r_, s_, sh, sw, ph, pw, dlh, dlw, groups, p_, q_, relu, nchunk):
    n = x.shape[0]
    k_, crs = w2.shape
    kg, cg = k_ // groups, x.shape[1] // groups
    pq = p_ * q_
    for t in nb.prange(nchunk):
        col = np.empty((crs, pq), x.dtype)
        out = np.empty((k_, pq), x.dtype)
        for i in range(t * n // nchunk, (t + 1) * n // nchunk):
            for g in range(groups):
                _im2col_one(x[i, g * cg:(g + 1) * cg], col, r_, s_, sh, sw, ph, pw, dlh, dlw, p_, q_)
                np.dot(w2[g * kg:(g + 1) * kg], col, out[g * kg:(g + 1) * kg])
            for k in range(k_):
                bk = b[k]
                if relu:
                    for j in range(pq):
                        v = out[k, j] + bk
                        y[i, k, j] = 0 if v <= 0 else v  # NaN stays NaN
                else:
                    for j in range(pq):
                        y[i, k, j] = out[k, j] + bk


@nb.njit(parallel=True, cache=True)
def _bwd_data(dy, w2t, dx, r_, s_, sh, sw, ph, pw, dlh, dlw, p_, q_, nchunk):
    # w2t: (G, C/G*R*S, K/G), each group's weight rows transposed
    n = dx.shape[0]
    groups, crs, kg = w2t.shape
    cg = dx.shape[1] // groups
    pq = p_ * q_
    for t in nb.prange(nchunk):
        col = np.empty((crs, pq), dx.dtype)
        for i in range(t * n // nchunk, (t + 1) * n // nchunk):
            for g in range(groups):
                np.dot(w2t[g], dy[i, g * kg:(g + 1) * kg], col)
                _col2im_one(col, dx[i, g * cg:(g + 1) * cg], r_, s_, sh, sw, ph, pw, dlh, dlw, p_, q_)


@nb.njit(parallel=True, cache=True)
def _bwd_weight(x, dy, dw2, db, r_, s_, sh, sw, ph, pw, dlh, dlw, groups, p_, q_, nchunk):
    n = x.shape[0]
    k_, crs = dw2.shape
    kg, cg = k_ // groups, x.shape[1] // groups
    pq = p_ * q_
    # Plain loops instead of np.zeros and the array statements part[t] += acc, dw2 += part[t]:
    # under parallel=True each of those becomes a parfor of its own (a separate gufunc through
    # the whole pipeline and LLVM), which tripled this function's first-call compile time
    # (about 8.8 -> 2.7 s CPU on this machine; bench/numba_table.py --compile-only).
    part = np.empty((nchunk, k_, crs), dw2.dtype)
    dbp = np.empty((nchunk, k_), np.float64)
    for t in nb.prange(nchunk):
        col = np.empty((crs, pq), x.dtype)
        acc = np.empty((kg, crs), x.dtype)
        for k in range(k_):
            dbp[t, k] = 0
            for j in range(crs):
                part[t, k, j] = 0
        for i in range(t * n // nchunk, (t + 1) * n // nchunk):
            for g in range(groups):
                _im2col_one(x[i, g * cg:(g + 1) * cg], col, r_, s_, sh, sw, ph, pw, dlh, dlw, p_, q_)
                np.dot(dy[i, g * kg:(g + 1) * kg], col.T, acc)
                for k in range(kg):
                    for j in range(crs):
                        part[t, g * kg + k, j] += acc[k, j]
            for k in range(k_):
                s = 0.0
                for j in range(pq):
                    s += dy[i, k, j]
                dbp[t, k] += s
    for t in range(nchunk):
        for k in range(k_):
            for j in range(crs):
                dw2[k, j] += part[t, k, j]
        for k in range(k_):
            db[k] += dbp[t, k]


@nb.njit(cache=True)
def _im2col_one(x, col, r_, s_, sh, sw, ph, pw, dlh, dlw, p_, q_):
    # x: (C, H, W) -> col: (C*R*S, P*Q); serial (called inside a parallel region)
    c_, h, w = x.shape
    for row in range(c_ * r_ * s_):
        c = row // (r_ * s_)
        r = (row // s_) % r_
        s = row % s_
        lo, hi = _valid_range(sw, pw, s * dlw, w, q_)
        off = s * dlw - pw
        for i in range(p_):
            hi_ = i * sh - ph + r * dlh
            o = i * q_
            if hi_ < 0 or hi_ >= h:
                for j in range(q_):
                    col[row, o + j] = 0
                continue
            for j in range(lo):
                col[row, o + j] = 0
            for j in range(lo, hi):
                col[row, o + j] = x[c, hi_, j * sw + off]
            for j in range(hi, q_):
                col[row, o + j] = 0


@nb.njit(cache=True)
def _col2im_one(col, dx, r_, s_, sh, sw, ph, pw, dlh, dlw, p_, q_):
    c_, h, w = dx.shape
    for c in range(c_):
        for i in range(h):
            for j in range(w):
                dx[c, i, j] = 0
        for r in range(r_):
            for s in range(s_):
                row = (c * r_ + r) * s_ + s
                lo, hi = _valid_range(sw, pw, s * dlw, w, q_)
                off = s * dlw - pw
                for i in range(p_):
                    hi_ = i * sh - ph + r * dlh
                    if hi_ < 0 or hi_ >= h:
                        continue
                    o = i * q_
                    for j in range(lo, hi):
                        dx[c, hi_, j * sw + off] += col[row, o + j]


_controller = None


def _one_blas_thread():
    """Context pinning every BLAS library to one thread (threadpoolctl, a scikit-learn dependency)."""
    global _controller
    if _controller is None:
        import threadpoolctl
        _controller = threadpoolctl.ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def _geometry(x_shape, w_shape, sh, sw, ph, pw, dlh, dlw):
    _, _, h, w = x_shape
    _, _, r, s = w_shape
    return r, s, (h + 2 * ph - dlh * (r - 1) - 1) // sh + 1, (w + 2 * pw - dlw * (s - 1) - 1) // sw + 1


def _chunks(n):
    # a few chunks per thread: a thread slowed by another process on the core does not hold up
    # the whole call (static split, one chunk per thread, varied 3x under load)
    return max(1, min(n, 4 * nb.get_num_threads()))


def conv2d_fwd(x, w, b, y, sh, sw, ph, pw, relu, dil_h=1, dil_w=1, groups=1):
    n, c = x.shape[:2]
    k = w.shape[0]
    r, s, p, q = _geometry(x.shape, w.shape, sh, sw, ph, pw, dil_h, dil_w)
    if n == 0 or p * q == 0:
        return
    with _one_blas_thread():
        _fwd(x, w.reshape(k, -1), b, y.reshape(n, k, p * q), r, s, sh, sw, ph, pw, dil_h, dil_w, groups, p, q,
             bool(relu), _chunks(n))


def conv2d_bwd_data(dy, w, dx, sh, sw, ph, pw, dil_h=1, dil_w=1, groups=1):
    n, c = dx.shape[:2]
    k = w.shape[0]
    r, s, p, q = _geometry(dx.shape, w.shape, sh, sw, ph, pw, dil_h, dil_w)
    if n == 0:
        return
    if p * q == 0:
        dx[...] = 0
        return
    w2t = np.ascontiguousarray(w.reshape(groups, k // groups, -1).transpose(0, 2, 1))
    with _one_blas_thread():
        _bwd_data(dy.reshape(n, k, p * q), w2t, dx, r, s, sh, sw, ph, pw, dil_h, dil_w, p, q, _chunks(n))


def conv2d_bwd_weight(x, dy, dw, db, sh, sw, ph, pw, dil_h=1, dil_w=1, groups=1):
    n, c = x.shape[:2]
    k = dw.shape[0]
    r, s, p, q = _geometry(x.shape, dw.shape, sh, sw, ph, pw, dil_h, dil_w)
    if n == 0 or p * q == 0:
        return
    with _one_blas_thread():
        _bwd_weight(x, dy.reshape(n, k, p * q), dw.reshape(k, -1), db, r, s, sh, sw, ph, pw, dil_h, dil_w, groups,
                    p, q, _chunks(n))
