"""Dropout kernels (reference) with the counter-based Philox-4x32-10 generator.

Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11 (Random123).
A mask bit is a pure function of (seed, step, layer, element index), so backward regenerates
the mask instead of storing it, and every backend produces the same bits (docs/KERNELS.md):
  key = (seed & 0xffffffff, seed >> 32); element i lives in block b = i // 4, lane i % 4;
  counter = (b & 0xffffffff, b >> 32, step, layer); the block's 4 output words serve lanes 0..3;
  threshold t = min(floor(p * 2^32), 2^32 - 1); element kept iff word >= t; kept values * 1/(1-p).
"""
import numpy as np

OPS = ["dropout_mask", "dropout_fwd", "dropout_bwd"]

# Philox-4x32 round multipliers and Weyl key increments (Random123 philox.h).
PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint32(0x9E3779B9)
PHILOX_W1 = np.uint32(0xBB67AE85)
PHILOX_ROUNDS = 10
_LO32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


def philox4x32_ref(counter, key, rounds=PHILOX_ROUNDS):
    """Philox-4x32-`rounds` of each counter row under one key.
    counter: (N, 4) uint32; key: (2,) uint32 -> (N, 4) uint32."""
    counter = np.asarray(counter, dtype=np.uint32)
    key = np.asarray(key, dtype=np.uint32)
    if counter.ndim != 2 or counter.shape[1] != 4:
        raise ValueError(f"philox4x32_ref(counter): expected shape (N, 4), got {counter.shape}")
    if key.shape != (2,):
        raise ValueError(f"philox4x32_ref(key): expected shape (2,), got {key.shape}")
    c0, c1, c2, c3 = (counter[:, j].copy() for j in range(4))
    k0, k1 = key[0], key[1]
    for _ in range(rounds):
        # 32x32 -> 64-bit products: both factors < 2^32, so uint64 holds them exactly.
        p0 = PHILOX_M0 * c0.astype(np.uint64)
        p1 = PHILOX_M1 * c2.astype(np.uint64)
        hi0, lo0 = (p0 >> _SHIFT32).astype(np.uint32), (p0 & _LO32).astype(np.uint32)
        hi1, lo1 = (p1 >> _SHIFT32).astype(np.uint32), (p1 & _LO32).astype(np.uint32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        # uint32 + uint32 wraps modulo 2^32, which is the key schedule (Weyl sequence).
        with np.errstate(over="ignore"):
            k0 = np.uint32(k0 + PHILOX_W0)
            k1 = np.uint32(k1 + PHILOX_W1)
    return np.stack([c0, c1, c2, c3], axis=1)


def threshold(p):
    """uint32 threshold: a word w keeps its element iff w >= t, so P(drop) = t / 2^32 ~ p."""
    return np.uint32(min(int(np.floor(p * 2.0 ** 32)), 0xFFFFFFFF))


def keep_ref(n, p, seed, step, layer):
    """Boolean keep mask of n elements (True = kept)."""
    seed = int(seed)
    nblocks = (n + 3) // 4
    b = np.arange(nblocks, dtype=np.uint64)
    counter = np.empty((nblocks, 4), dtype=np.uint32)
    counter[:, 0] = (b & _LO32).astype(np.uint32)
    counter[:, 1] = (b >> _SHIFT32).astype(np.uint32)
    counter[:, 2] = np.uint32(int(step) & 0xFFFFFFFF)
    counter[:, 3] = np.uint32(int(layer) & 0xFFFFFFFF)
    key = np.array([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF], dtype=np.uint32)
    words = philox4x32_ref(counter, key).reshape(-1)[:n]   # block b's lanes 0..3 -> elements 4b..4b+3
    return words >= threshold(p)


def dropout_mask_ref(mask, p, seed, step, layer):
    # mask: (n,) uint8, 1 = kept
    mask[...] = keep_ref(mask.size, p, seed, step, layer)


def dropout_fwd_ref(x, y, p, seed, step, layer):
    # x, y: any shape, same shape; inverted dropout (Srivastava et al. 2014): y = x * keep / (1 - p)
    if p == 0:
        y[...] = x
        return
    keep = keep_ref(x.size, p, seed, step, layer).reshape(x.shape)
    scale = x.dtype.type(1.0 / (1.0 - p))   # the scale in the array's precision, as the fast kernels use it
    np.multiply(np.where(keep, x, 0), scale, out=y)


def dropout_bwd_ref(dy, dx, p, seed, step, layer):
    # the same mask and scale as the forward, regenerated from (seed, step, layer)
    dropout_fwd_ref(dy, dx, p, seed, step, layer)
