"""Max-pool inputs that pin down NaN, -inf and tie handling (PyTorch's rule, every backend: a
window holding a NaN gives NaN and names its LAST NaN in row-major order; otherwise the first
maximum wins; a window of -inf names its first real tap). `windows` gives each window of a
stride = kernel, unpadded pooling one pattern; channel c shifts the patterns by c, so neighbouring
lanes of the blocked kernel see different patterns in the same window. `mixed` draws from
{-inf, 0, 1, NaN} for overlapping, padded and dilated windows."""
import numpy as np


def patterns(k):
    """Window contents (k taps, row-major) of each case, named."""
    mid = k // 2

    def put(idx, val, fill=None):
        a = np.arange(k, dtype=np.float64) - k / 2 if fill is None else np.full(k, fill)
        a[list(idx)] = val
        return a

    nan_then_inf = put([0], np.nan)
    nan_then_inf[k - 1] = np.inf
    ties = put([0], 0.0, fill=1.0)
    return {"nan-first": put([0], np.nan), "nan-middle": put([mid], np.nan), "nan-last": put([k - 1], np.nan),
            "nans-first-last": put([0, k - 1], np.nan), "nans-first-middle": put([0, mid], np.nan),
            "all-nan": put(range(k), np.nan), "nan-among-inf": put([mid], np.nan, fill=-np.inf),
            "nan-before-inf": nan_then_inf, "ties": ties, "all-equal": np.full(k, 2.0),
            "all-neg-inf": np.full(k, -np.inf), "neg-inf-then-real": put([k - 1], 0.0, fill=-np.inf)}


def windows(n, c, kh, kw, rows=3, cols=4):
    """x (n, c, rows*kh, cols*kw) float32: window (i, j) of plane (b, ch) holds pattern
    (i*cols + j + b + ch) mod the number of patterns."""
    pats = list(patterns(kh * kw).values())
    x = np.empty((n, c, rows * kh, cols * kw), np.float32)
    for b, ch, i, j in np.ndindex(n, c, rows, cols):
        x[b, ch, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw] = pats[(i * cols + j + b + ch) % len(pats)].reshape(kh, kw)
    return x


def mixed(shape, seed):
    return np.random.default_rng(seed).choice(np.array([-np.inf, 0, 1, np.nan], np.float32), shape,
                                              p=[0.2, 0.25, 0.25, 0.3])
