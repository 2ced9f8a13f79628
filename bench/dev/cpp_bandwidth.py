"""Quick bandwidth check of the fused C++ optimizer and dropout kernels against a NumPy
STREAM-like copy measured in the same run. Usage: python bench/dev/cpp_bandwidth.py [--threads N]

Bytes counted per element: adam 28 (read p, g, m, v; write p, m, v), rmsprop 20 (read p, g, s;
write p, s), dropout fwd+bwd 16 (each reads 4 and writes 4), copy and relu 8 (read 4, write 4).
"""
import argparse
import time

import numpy as np

import fasttrain
from fasttrain import _C


def median_time(fn, runs=20, warmup=3):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    if args.threads:
        fasttrain.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n = 10_000_000
    p, g = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    m, v, s = np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)
    src, dst = rng.standard_normal(n, dtype=np.float32), np.empty(n, np.float32)

    rows = []
    t = median_time(lambda: np.copyto(dst, src), args.runs)
    rows.append(("numpy copy (1 thread)", n, t, 8 * n / t / 1e9))
    t = median_time(lambda: _C.relu_fwd(src, dst), args.runs)  # a copy-like pass on all threads
    rows.append(("C++ relu_fwd", n, t, 8 * n / t / 1e9))
    t = median_time(lambda: _C.adam_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001, 0.0, 0.0, 0.01), args.runs)
    rows.append(("adam_step", n, t, 28 * n / t / 1e9))
    t = median_time(lambda: _C.rmsprop_step(p, g, s, 1e-3, 0.9, 1e-8, 0.0, 0.0), args.runs)
    rows.append(("rmsprop_step", n, t, 20 * n / t / 1e9))

    nd = 4_194_304  # e.g. a 64x64x32x32 activation
    x, y, dx = rng.standard_normal(nd, dtype=np.float32), np.empty(nd, np.float32), np.empty(nd, np.float32)

    def dropout():
        _C.dropout_fwd(x, y, 0.5, 1234, 7, 3)
        _C.dropout_bwd(y, dx, 0.5, 1234, 7, 3)

    t = median_time(dropout, args.runs)
    rows.append(("dropout fwd+bwd", nd, t, 16 * nd / t / 1e9))
    print(f"threads={_C.num_threads()} {_C.build_info()['simd']}")
    for name, size, t, gbs in rows:
        print(f"{name:22s} n={size:>9d}  median {t * 1e3:8.3f} ms  {gbs:6.1f} GB/s")


if __name__ == "__main__":
    main()
