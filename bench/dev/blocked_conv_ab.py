"""Interleaved A/B of the blocked-layout convolution entry points (conv2d_blocked_fwd / _bwd_data /
_bwd_weight on inputs already blocked) between another build of fasttrain._C (a copy of an older
_C*.so) and this tree's, both loaded in one process and alternating call pair by call pair (the
order flipping each round), one thread, timed by the thread's CPU time; medians over rounds, with
the quartiles of the per-round ratios.

    cp .venv/lib/python3.11/site-packages/fasttrain/_C*.so /tmp/base/pkg/   # before rebuilding
    ln -s $PWD/.venv/lib/python3.11/site-packages/scipy_openblas32 /tmp/base/  # its RUNPATH
    python bench/dev/blocked_conv_ab.py /tmp/base/pkg/_C.cpython-311-x86_64-linux-gnu.so \\
        [--ops fwd,bwd_weight] [--rounds 9] [--algo auto|direct] [--shapes N,C,H,W,K,R,stride,pad ...]

Default shapes: ResNet's 3x3 stride-2 layers (16->32 on 32x32, 32->64 on 16x16) and a 1x1 stride-2
shortcut. Argument `same` for the build times this build against itself (the noise floor).
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import fasttrain  # noqa: E402,F401  (loads OpenBLAS before the copied module)
from fasttrain import _C as NEW  # noqa: E402

from bench.conv_algos import _arrays, _blocked_ops  # noqa: E402


def _load(path):
    spec = importlib.util.spec_from_file_location("_C", path)  # the init function is PyInit__C
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="the other build's _C*.so, or 'same'")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--ops", default="fwd,bwd_data,bwd_weight")
    ap.add_argument("--algo", default="auto")
    ap.add_argument("--shapes", nargs="*",
                    default=["128,16,32,32,32,3,2,1", "128,32,16,16,64,3,2,1", "128,16,32,32,32,1,2,0"])
    args = ap.parse_args()
    old = NEW if args.base == "same" else _load(args.base)
    for mod in (old, NEW):
        mod.set_num_threads(1)
        mod.set_conv2d_algo(args.algo)
    for text in args.shapes:
        shape = tuple(int(v) for v in text.split(","))
        N, C, H, W, K, R, st, pad = shape
        P = (H + 2 * pad - R) // st + 1
        flops = 2 * N * K * C * R * R * P * P
        arrays = _arrays(shape)
        ops = {"base": _blocked_ops(old, arrays, st, pad)[0], "new": _blocked_ops(NEW, arrays, st, pad)[0]}
        for op in args.ops.split(","):
            t = {"base": [], "new": []}
            for r in range(args.rounds):
                for side in ("base", "new") if r % 2 == 0 else ("new", "base"):
                    f = ops[side][op]
                    f()
                    t0 = time.thread_time()
                    f()
                    f()
                    t[side].append((time.thread_time() - t0) / 2)
            mb, mn = statistics.median(t["base"]), statistics.median(t["new"])
            q = statistics.quantiles([b / n for b, n in zip(t["base"], t["new"])], n=4)
            print(f"{text} {op:10s} base {mb * 1e3:.3f} ms ({flops / mb / 1e9:.0f} GFLOP/s)  new {mn * 1e3:.3f} ms "
                  f"({flops / mn / 1e9:.0f})  base/new {mb / mn:.3f} [quartiles {q[0]:.3f} {q[2]:.3f}]", flush=True)


if __name__ == "__main__":
    main()
