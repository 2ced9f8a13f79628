"""Codec throughput per core, this tree's C++ against another build of fasttrain._C, interleaved
in one process (the fair comparison on a shared, noisy machine): each timed call of one build is
followed by the same call of the other, and medians and bests of the pairs are printed.

The other build, e.g. of the commit before a change (CUDA off, a few minutes on 2 cores):
    mkdir /tmp/base && cp -r CMakeLists.txt csrc /tmp/base/ && git show REV:csrc/cpu/codecs.cpp > /tmp/base/csrc/cpu/codecs.cpp
    cmake -S /tmp/base -B /tmp/base/build -DCMAKE_BUILD_TYPE=Release -DFASTTRAIN_CUDA=OFF \\
        -Dpybind11_DIR=$(.venv/bin/python -c "import pybind11; print(pybind11.get_cmake_dir())") \\
        -DPython_EXECUTABLE=.venv/bin/python && cmake --build /tmp/base/build -j2
    .venv/bin/python bench/dev/codecs_ab.py /tmp/base/build/_C*.so
GB/s = 4 n / time (float32 bytes in for encode, out for decode), one thread, n = 8M floats.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import fasttrain as ft  # noqa: E402
from bench.harness import load_extension_build  # noqa: E402
from fasttrain.parallel import codecs as C  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="path of the other build's _C*.so")
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--n", type=int, default=8 << 20)
    ap.add_argument("--codecs", default="fp16,bf16,int8,int4,sign")
    args = ap.parse_args(argv)
    base, new = load_extension_build(args.base), C._C
    ft.set_num_threads(1)
    base.set_num_threads(1)
    n = args.n
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n, dtype=np.float32)
    r = rng.standard_normal(n, dtype=np.float32) * np.float32(0.01)
    y = np.empty(n, np.float32)
    print(f"{'codec':<6} {'direction':<10} {'base GB/s':>10} {'new GB/s':>9} {'speedup':>8}   best base / new "
          f"(median and best of {args.repeat} interleaved pairs, 1 thread, n={n})")
    try:
        for name in args.codecs.split(","):
            codec = C.get_codec(name)
            out = np.empty(codec.nbytes(n), np.uint8)
            calls = {"encode": lambda: codec.encode(x, out, np.random.default_rng(1)),
                     "encode_ef": lambda: codec.encode(x, out, np.random.default_rng(1), residual=r),
                     "decode": lambda: codec.decode(out, y)}
            for direction, f in calls.items():
                times = {"base": [], "new": []}
                for mod in (base, new):  # warm-up
                    C._C = mod
                    f()
                for _ in range(args.repeat):
                    for key, mod in (("base", base), ("new", new)):
                        C._C = mod
                        t0 = time.perf_counter()
                        f()
                        times[key].append(time.perf_counter() - t0)
                med = {k: 4 * n / statistics.median(v) / 1e9 for k, v in times.items()}
                best = {k: 4 * n / min(v) / 1e9 for k, v in times.items()}
                print(f"{name:<6} {direction:<10} {med['base']:10.2f} {med['new']:9.2f} {med['new'] / med['base']:7.2f}x"
                      f"   {best['base']:6.2f} / {best['new']:6.2f}", flush=True)
    finally:
        C._C = new


if __name__ == "__main__":
    main()
