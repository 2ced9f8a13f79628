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


_SUB = 512   # blocks per sub-chunk: 4 lane buffers of 2 KiB stay in L1


@nb.njit(parallel=True, cache=True)
def _apply_full_blocks(x, y, threshold, scale, k0, k1, step, layer, nchunk):
    # Whole 4-element blocks, in two passes per sub-chunk of _SUB blocks:
    #  1. the Philox words of consecutive blocks into four lane buffers (contiguous stores, so LLVM
    #     vectorizes the ten rounds across blocks: the 32x32->64 products become vpmuludq);
    #  2. threshold and scale, reading the buffers.
    # Measured on 4.19M floats, 2 threads: 8.5 ms with one fused loop storing y[4b+lane] (the
    # strided stores kept it scalar), 6.2 ms this way (C++: 5.9 ms).
    # A dropped element is +0, like the reference: a select, not a multiply by 0 (-x * 0 = -0).
    # The product is formed before the select so LLVM emits a vector blend; with the multiply
    # inside the conditional expression it kept a branch per element and ran 3x slower.
    nblk = x.size // 4
    zero = scale * 0
    for t in nb.prange(nchunk):
        w0 = np.empty(_SUB, np.uint32)
        w1 = np.empty(_SUB, np.uint32)
        w2 = np.empty(_SUB, np.uint32)
        w3 = np.empty(_SUB, np.uint32)
        lo = t * nblk // nchunk
        hi = (t + 1) * nblk // nchunk
        for s0 in range(lo, hi, _SUB):
            m = min(_SUB, hi - s0)
            for j in range(m):
                b = s0 + j
                a0, a1, a2, a3 = _philox(np.uint32(b & 0xFFFFFFFF), np.uint32(b >> 32), step, layer, k0, k1)
                w0[j] = a0
                w1[j] = a1
                w2[j] = a2
                w3[j] = a3
            base = 4 * s0
            for j in range(m):
                i = base + 4 * j
                v0 = x[i] * scale
                y[i] = v0 if w0[j] >= threshold else zero
                v1 = x[i + 1] * scale
                y[i + 1] = v1 if w1[j] >= threshold else zero
                v2 = x[i + 2] * scale
                y[i + 2] = v2 if w2[j] >= threshold else zero
                v3 = x[i + 3] * scale
                y[i + 3] = v3 if w3[j] >= threshold else zero


@nb.njit(cache=True)
def _apply_tail(x, y, threshold, scale, k0, k1, step, layer):
    n = x.size
    b = n // 4
    if b * 4 == n:
        return
    w = _philox(np.uint32(b & 0xFFFFFFFF), np.uint32(b >> 32), step, layer, k0, k1)
    for lane in range(n - b * 4):
        y[b * 4 + lane] = x[b * 4 + lane] * scale if w[lane] >= threshold else scale * 0


def _apply(x, y, threshold, scale, k0, k1, step, layer):
    nchunk = max(1, min(nb.get_num_threads(), x.size // (4 * _SUB)))
    _apply_full_blocks(x, y, threshold, scale, k0, k1, step, layer, nchunk)
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
