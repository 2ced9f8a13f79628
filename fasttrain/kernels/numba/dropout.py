"""Dropout with Philox-4x32-10 in Numba: the same mask bits as the NumPy reference (docs/KERNELS.md).
Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11."""
import numba as nb
import numpy as np

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


@nb.njit(inline="always")
def _philox(c0, c1, c2, c3, k0, k1):
    # Every word lives in a uint64 holding a 32-bit value, so a vectorized round is vpmuludq,
    # vpsrlq and xors on 8 blocks per zmm with no conversions. Kept as uint32 between rounds,
    # LLVM packed and unpacked 64 <-> 32-bit lanes around every multiply (vpmovqd, vpmovzxdq,
    # vpermt2d) and the Philox pass took twice as long. Upper bits of c0, c2 and the keys may hold
    # garbage between rounds: only their low 32 bits reach a product (masked here) or an output
    # (masked at the end); c1, c3 are low halves, already clean.
    for _ in range(10):
        p0 = _M0 * (c0 & _MASK32)
        p1 = _M1 * (c2 & _MASK32)
        c0, c1, c2, c3 = (p1 >> _S32) ^ c1 ^ k0, p1 & _MASK32, (p0 >> _S32) ^ c3 ^ k1, p0 & _MASK32
        k0 = k0 + _W0
        k1 = k1 + _W1
    return c0 & _MASK32, c1, c2 & _MASK32, c3


@nb.njit(inline="always")
def _block_words(b, step, layer, k0, k1):
    """The Philox words (as uint64) of 4-element block b: counter (b lo, b hi, step, layer)."""
    ub = np.uint64(b)
    return _philox(ub & _MASK32, ub >> _S32, np.uint64(step), np.uint64(layer), np.uint64(k0), np.uint64(k1))


_SUB = 512   # blocks per sub-chunk: the 8 KiB word buffer stays in L1


@nb.njit(parallel=True, cache=True)
def _apply_full_blocks(x, y, threshold, scale, k0, k1, step, layer, nchunk):
    # Whole 4-element blocks, in two passes per sub-chunk of _SUB blocks:
    #  1. the Philox words of consecutive blocks into a (_SUB, 4) buffer: the ten rounds
    #     vectorize across blocks and the four words are interleaved by shuffles (vpermi2d);
    #  2. threshold and scale as one contiguous loop over the 4 * m elements, the words read from
    #     the flattened buffer in element order.
    # The buffer is allocated inside the loop body, so its (_SUB, 4) shape is a constant LLVM sees,
    # and the stride-4 stores of pass 1 vectorize. Storing y[4b + lane] directly (from the words,
    # or from four lane buffers, also with unsigned indices) stayed scalar in inspect_asm.
    # Measured on 4.19M floats, 2 threads, CPU time per forward call on a loaded machine
    # (bench/dev/numba_vs_cpp.py): 6.3 ms with four lane buffers and uint32 Philox words,
    # 3.7 ms this way (C++ 4.25 ms).
    # A dropped element is +0, like the reference: a select, not a multiply by 0 (-x * 0 = -0).
    # The product is formed before the select so LLVM emits a vector blend; with the multiply
    # inside the conditional expression it kept a branch per element and ran 3x slower.
    nblk = x.size // 4
    zero = scale * 0
    for t in nb.prange(nchunk):
        w = np.empty((_SUB, 4), np.uint32)
        wf = w.reshape(-1)
        lo = t * nblk // nchunk
        hi = (t + 1) * nblk // nchunk
        for s0 in range(lo, hi, _SUB):
            m = min(_SUB, hi - s0)
            for j in range(m):
                a0, a1, a2, a3 = _block_words(s0 + j, step, layer, k0, k1)
                w[j, 0] = a0
                w[j, 1] = a1
                w[j, 2] = a2
                w[j, 3] = a3
            xs = x[4 * s0:4 * (s0 + m)]
            ys = y[4 * s0:4 * (s0 + m)]
            for k in range(4 * m):
                v = xs[k] * scale
                ys[k] = v if wf[k] >= threshold else zero


@nb.njit(cache=True)
def _apply_tail(x, y, threshold, scale, k0, k1, step, layer):
    n = x.size
    b = n // 4
    if b * 4 == n:
        return
    w = _block_words(b, step, layer, k0, k1)
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
