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
