"""Fused softmax cross-entropy with Numba: one visit per row computes the max, the sum of exp, the
row's loss and its gradient while the row sits in L1 (docs/KERNELS.md). exp is _vmath.exp_f32
(vmath.h's algorithm), which vectorizes where math.exp stays a scalar libm call per element."""
import math

import numba as nb
import numpy as np

from ._vmath import FASTMATH, exp_f32, fmax


@nb.njit(cache=True)
def _row_max(row):
    """max(row) for a row of size >= 1, NaNs skipped (NaN only for an all-NaN row): a NaN logit
    still makes the row's sum, loss and gradient NaN, through exp(NaN - m)."""
    m = row[0]
    for j in range(1, row.size):
        m = fmax(m, row[j])
    return m


# 'reassoc' lets LLVM split the sum into vector partial sums (as `omp simd reduction` does in
# losses.cpp). The terms are in [0, 1] or NaN, so no order can overflow, and a NaN term makes the
# sum NaN in any order; only the rounding of the sum depends on the order.
@nb.njit(fastmath=FASTMATH | {"reassoc"}, cache=True)
def _exp_shifted(row, m, out):
    """out = exp(row - m), returns sum(out) in float32."""
    s = np.float32(0.0)
    for j in range(row.size):
        e = exp_f32(row[j] - m)
        out[j] = e
        s += e
    return s


# error_model='numpy': no zero-divisor check (the denominator is s N >= N) blocking vectorization
@nb.njit(parallel=True, cache=True, error_model="numpy")
def _softmax_xent(logits, labels, dlogits):
    n, c = logits.shape
    losses = np.empty(n, np.float64)
    nf = np.float32(n)
    inv_n = np.float32(1.0) / nf
    for i in nb.prange(n):
        row = logits[i]
        d = dlogits[i]
        # subtracting the max: every exp argument is <= 0, so nothing overflows
        m = _row_max(row)
        s = _exp_shifted(row, m, d)
        y = labels[i]
        # loss_i = log(sum_j exp(x_j)) - x_y = log(s) - (x_y - m), in float64 like the reference
        losses[i] = math.log(np.float64(s)) - np.float64(row[y] - m)
        denom = s * nf   # e / (s N), rounded as the reference does
        for j in range(c):
            d[j] = d[j] / denom
        d[y] -= inv_n
    return losses


def softmax_xent(logits, labels, dlogits):
    n = logits.shape[0]
    if n == 0:
        return 0.0
    # summed outside the parallel function: inside it, .sum() becomes a parallel reduction whose
    # rounding depends on the thread count
    return float(_softmax_xent(logits, labels, dlogits).sum() / n)


@nb.njit(parallel=True, cache=True, error_model="numpy")
def _softmax_xent_weighted(logits, labels, w, eps, ignore_index, scale, big_w, dlogits, row_loss):
    n, c = logits.shape
    eps_c = eps / np.float32(c)
    one = np.float32(1.0)
    a_smooth = np.float32(np.float64(eps) * big_w / c)
    for i in nb.prange(n):
        row = logits[i]
        d = dlogits[i]
        y = labels[i]
        if y == ignore_index:  # costs nothing, moves nothing
            row_loss[i] = 0.0
            for j in range(c):
                d[j] = np.float32(0.0)
            continue
        m = _row_max(row)
        s = _exp_shifted(row, m, d)
        log_s = math.log(np.float64(s))
        wy = w[y]
        # -log p_c = log s - z_c; the smoothing term needs sum_c w_c z_c (float64, like the reference)
        loss = (1.0 - np.float64(eps)) * np.float64(wy) * (log_s - np.float64(row[y] - m))
        if eps != 0:
            wz = 0.0
            for j in range(c):
                wz += np.float64(w[j]) * np.float64(row[j] - m)
            loss += np.float64(eps_c) * (big_w * log_s - wz)
        row_loss[i] = loss
        # d_j = scale (a p_j - (eps/C) w_j), a = (1 - eps) w_y + eps W / C; then the label's own term
        pa = scale * ((one - eps) * wy + a_smooth) / s
        pw = scale * eps_c
        for j in range(c):
            d[j] = pa * d[j] - pw * w[j]
        d[y] -= scale * (one - eps) * wy


def softmax_xent_weighted(logits, labels, weight, label_smoothing, ignore_index, scale, dlogits, row_loss):
    if logits.shape[0] == 0:
        return
    f = np.float32
    _softmax_xent_weighted(logits, labels, weight, f(label_smoothing), np.int64(ignore_index), f(scale),
                           float(weight.astype(np.float64).sum()), dlogits, row_loss)
