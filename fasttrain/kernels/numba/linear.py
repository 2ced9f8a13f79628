"""Fully connected layer with Numba (docs/KERNELS.md). The matrix products go through NumPy's BLAS
(sgemm; a GEMM written in Numba is several times slower); Numba does the passes BLAS has no call
for: the bias broadcast and the bias-gradient column sums, parallel over output features."""
import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True)
def _add_bias(y, b):
    n, o = y.shape
    for i in nb.prange(n):
        for j in range(o):
            y[i, j] += b[j]


@nb.njit(parallel=True, cache=True)
def _col_sums_acc(dy, db):
    # db[j] += sum_i dy[i, j]; sums in float64 so a large batch does not lose float32 bits.
    # Parallel over blocks of columns, each walking rows in order (contiguous reads per row).
    n, o = dy.shape
    nblk = (o + 63) // 64
    for blk in nb.prange(nblk):
        j0 = blk * 64
        j1 = min(j0 + 64, o)
        acc = np.zeros(j1 - j0, np.float64)
        for i in range(n):
            for j in range(j0, j1):
                acc[j - j0] += dy[i, j]
        for j in range(j0, j1):
            db[j] += acc[j - j0]


def linear_fwd(x, w, b, y):
    np.matmul(x, w.T, out=y)
    _add_bias(y, b)


def linear_bwd(x, w, dy, dx, dw, db):
    np.matmul(dy, w, out=dx)
    dw += dy.T @ x
    _col_sums_acc(dy, db)
