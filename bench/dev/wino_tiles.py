"""Direct vs Winograd F(2x2, 3x3) vs F(4x4, 3x3) on the blocked layout, forward and data gradient,
per ResNet-20 3x3 stride-1 shape and batch, the three forced in turn, interleaved call by call.

    python bench/dev/wino_tiles.py [--threads 1] [--batches 128 32] [--samples 15] [--cpu-time]
                                   [--shapes C,H,K ...]

Prints ms (min over the samples: the machine is shared) per op and algorithm. --cpu-time times
each call by the calling thread's CPU time (use with --threads 1 on a loaded machine).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

ALGOS = ("direct", "winograd-blocked", "winograd43-blocked")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 32])
    ap.add_argument("--samples", type=int, default=15)
    ap.add_argument("--cpu-time", action="store_true")
    ap.add_argument("--shapes", nargs="+", default=["16,32,16", "32,16,32", "32,16,64", "64,8,64"])
    args = ap.parse_args(argv)
    from fasttrain import _C as C
    C.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    print(f"{args.threads} thread(s), {'thread CPU' if args.cpu_time else 'wall'} time, min of {args.samples}; "
          f"ms fwd / bwd_data for {' / '.join(ALGOS)}")
    try:
        for N in args.batches:
            for text in args.shapes:
                Cc, H, K = (int(v) for v in text.split(","))
                rng = np.random.default_rng(0)
                x = rng.standard_normal((N, Cc, H, H)).astype(np.float32)
                w = (rng.standard_normal((K, Cc, 3, 3)) / np.sqrt(9 * Cc)).astype(np.float32)
                b = np.zeros(K, np.float32)
                xb, yb = C.to_blocked(x, 1, 1, 1, 1), np.zeros((N, (K + 15) // 16, H, H, 16), np.float32)
                dyb = C.to_blocked(rng.standard_normal((N, K, H, H)).astype(np.float32), 1, 1, 1, 1)
                dxb = np.zeros((N, (Cc + 15) // 16, H, H, 16), np.float32)
                ops = {"fwd": lambda: C.conv2d_blocked_fwd(xb, w, b, yb, 1, 1, 1, 1, False),
                       "bwd_data": lambda: C.conv2d_blocked_bwd_data(dyb, w, dxb, 1, 1, 1, 1, halo_dy=1)}
                cells = []
                for op, f in ops.items():
                    best = {a: float("inf") for a in ALGOS}
                    for i in range(args.samples + 1):
                        for a in ALGOS:
                            C.set_conv2d_algo(a)
                            t = clock()
                            f()
                            if i:  # the first round warms buffers up
                                best[a] = min(best[a], clock() - t)
                    cells.append(f"{op} " + " / ".join(f"{best[a] * 1e3:.3f}" for a in ALGOS))
                auto = C.conv2d_choice("fwd", N, Cc, H, H, K, 3, 3, 1, 1, 1, 1, blocked=True)
                print(f"N={N:<4} {Cc:>3}->{K:<3} {H:>2}x{H:<2}  " + "   ".join(cells) + f"   auto: {auto}", flush=True)
    finally:
        C.set_conv2d_algo("auto")


if __name__ == "__main__":
    main()
