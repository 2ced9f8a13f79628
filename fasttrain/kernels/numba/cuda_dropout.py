"""Dropout with numba-cuda: one thread per 4-element block, Philox-4x32-10 with the same bits as
the reference (docs/KERNELS.md; Salmon et al. SC'11). See _cuda_common for how arrays are taken."""
import numpy as np
from numba import cuda, uint32, uint64

from ._cuda_common import THREADS, dev, grid, stream_of
from .dropout import _params


@cuda.jit(device=True, inline=True)
def _philox(c0, c1, c2, c3, k0, k1):
    for _ in range(10):
        p0 = uint64(0xD2511F53) * uint64(c0)
        p1 = uint64(0xCD9E8D57) * uint64(c2)
        n0 = uint32((p1 >> uint64(32)) ^ uint64(c1) ^ uint64(k0))
        n2 = uint32((p0 >> uint64(32)) ^ uint64(c3) ^ uint64(k1))
        c1 = uint32(p1 & uint64(0xFFFFFFFF))
        c3 = uint32(p0 & uint64(0xFFFFFFFF))
        c0 = n0
        c2 = n2
        k0 = uint32((uint64(k0) + uint64(0x9E3779B9)) & uint64(0xFFFFFFFF))
        k1 = uint32((uint64(k1) + uint64(0xBB67AE85)) & uint64(0xFFFFFFFF))
    return c0, c1, c2, c3


@cuda.jit
def _apply(x, y, threshold, scale, k0, k1, step, layer):
    n = x.size
    for b in range(cuda.grid(1), (n + 3) // 4, cuda.gridsize(1)):
        w0, w1, w2, w3 = _philox(uint32(b & 0xFFFFFFFF), uint32(b >> 32), step, layer, k0, k1)
        i = 4 * b
        y[i] = x[i] * scale if w0 >= threshold else 0
        if i + 1 < n:
            y[i + 1] = x[i + 1] * scale if w1 >= threshold else 0
        if i + 2 < n:
            y[i + 2] = x[i + 2] * scale if w2 >= threshold else 0
        if i + 3 < n:
            y[i + 3] = x[i + 3] * scale if w3 >= threshold else 0


@cuda.jit
def _mask(mask, threshold, k0, k1, step, layer):
    n = mask.size
    for b in range(cuda.grid(1), (n + 3) // 4, cuda.gridsize(1)):
        w0, w1, w2, w3 = _philox(uint32(b & 0xFFFFFFFF), uint32(b >> 32), step, layer, k0, k1)
        i = 4 * b
        mask[i] = 1 if w0 >= threshold else 0
        if i + 1 < n:
            mask[i + 1] = 1 if w1 >= threshold else 0
        if i + 2 < n:
            mask[i + 2] = 1 if w2 >= threshold else 0
        if i + 3 < n:
            mask[i + 3] = 1 if w3 >= threshold else 0


def dropout_mask(mask, p, seed, step, layer, stream=0):
    if mask.size:
        _mask[grid((mask.size + 3) // 4), THREADS, stream_of(stream)](dev(mask), *_params(p, seed, step, layer))


def dropout_fwd(x, y, p, seed, step, layer, stream=0):
    if x.size:
        t, k0, k1, s, l = _params(p, seed, step, layer)
        _apply[grid((x.size + 3) // 4), THREADS, stream_of(stream)](dev(x), dev(y), t, np.float32(1.0 / (1.0 - p)),
                                                                    k0, k1, s, l)


def dropout_bwd(dy, dx, p, seed, step, layer, stream=0):
    dropout_fwd(dy, dx, p, seed, step, layer, stream)
