"""Error bounds of the compressed ring all-reduce, shared by the thread tests (test_dist.py) and
the mpiexec script (mpi_scripts/hop_check.py).

One encode of a block with largest magnitude M errs by at most beta * M per value: fp16 and bf16
round to nearest (relative 2^-11 and 2^-9 <= 2^-8), int8/int4 stochastic rounding errs by less
than one step M / levels, sign sends +-mean|x| for x, off by at most max|x|. The 'once' schedule
encodes each value once: |error| <= beta * max|sum|. The 'hop' schedule encodes a chain: chunk c
leaves rank c (k = 1 rank's data), rank c + 1 decodes, adds its own and re-encodes (k = 2), ...,
the owner c + p - 1 encodes the full sum (k = p). Encode k sees the exact partial sum P_k plus
the errors E_{k-1} made so far, so E_k <= E_{k-1} + beta (P_k + E_{k-1}) and
E_p <= beta (1 + beta)^(p - 1) * sum_k max|P_k|: for same-sign data about (p + 1) / 2 times the
'once' bound, growing linearly with p. float32 rounding of the p - 1 additions adds
2^-24 per addition of at most the same magnitudes. 'mean' divides everything by p."""
import numpy as np

BETA = {"fp16": 2.0 ** -11, "bf16": 2.0 ** -8, "int8": 1 / 127, "int4": 1 / 7, "sign": 1.0}


def data(rank, n, seed=0):
    """A rank's float32 values; positive, so the sums stay away from zero."""
    return np.random.default_rng([seed, rank, n]).uniform(0.5, 1.5, n).astype(np.float32)


def chain_partials(parts):
    """max over values and chunks of |sum of k consecutive ranks' data| (cyclic), k = 1..p."""
    parts = np.asarray(parts, np.float64)
    p = len(parts)
    out = []
    for k in range(1, p + 1):
        m = 0.0
        for c in range(p):
            s = np.sum(parts[[(c + j) % p for j in range(k)]], axis=0)
            m = max(m, float(np.max(np.abs(s))) if s.size else 0.0)
        out.append(m)
    return out


def hop_bound(parts, codec, op="sum"):
    """Largest |hop result - exact result| the derivation above allows."""
    beta = BETA[codec]
    p = len(parts)
    pk = chain_partials(parts)
    b = (beta + p * 2.0 ** -24) * (1 + beta) ** (p - 1) * sum(pk)
    return b / p if op == "mean" else b


def once_bound(parts, codec, op="sum"):
    p = len(parts)
    b = (BETA[codec] + p * 2.0 ** -24) * chain_partials(parts)[-1]
    return b / p if op == "mean" else b


def encoded_chain(parts, codec, op="sum"):
    """What the 'hop' schedule computes for a deterministic, elementwise codec (fp16, bf16): the
    chain of decode(encode(.)) and float32 additions in ring order, owner = chunk + p - 1."""
    from fasttrain.parallel import chunk_offsets, get_codec

    c = get_codec(codec)
    p, n = len(parts), len(parts[0])
    off = chunk_offsets(n, p)
    out = np.empty(n, np.float32)
    for ch in range(p):
        a, b = int(off[ch]), int(off[ch + 1])
        if a == b:
            continue
        v = parts[ch][a:b].copy()
        for k in range(1, p):
            v = parts[(ch + k) % p][a:b] + c.roundtrip(v)
        if op == "mean":
            v /= np.float32(p)
        out[a:b] = c.roundtrip(v)
    return out
