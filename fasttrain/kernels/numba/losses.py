"""Fused softmax cross-entropy with Numba: one pass per row computes max, log-sum-exp, the loss
and the gradient (docs/KERNELS.md)."""
import math

import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True)
def _softmax_xent(logits, labels, dlogits):
    n, c = logits.shape
    losses = np.empty(n, np.float64)
    inv_n = 1.0 / n
    for i in nb.prange(n):
        row = logits[i]
        m = row[0]
        for j in range(1, c):
            if row[j] > m:
                m = row[j]
        s = 0.0
        for j in range(c):
            e = math.exp(row[j] - m)
            dlogits[i, j] = e
            s += e
        inv_s = 1.0 / s
        for j in range(c):
            dlogits[i, j] = dlogits[i, j] * inv_s * inv_n
        dlogits[i, labels[i]] -= inv_n
        losses[i] = math.log(s) + m - row[labels[i]]
    return losses.sum() / n


def softmax_xent(logits, labels, dlogits):
    return float(_softmax_xent(logits, labels, dlogits))
