"""Whole training steps (forward, backward, Adam) on another build of fasttrain._C (e.g. main's, copied
aside before a change) against this tree's, interleaved step by step in one process with the order
rotating, so a shared machine's load hits both alike. The layers find the extension through
sys.modules["fasttrain._C"] at each call, so swapping that entry switches every blocked kernel.

    python bench/dev/step_ab.py --base /tmp/base_C.so [--nets resnet8] [--batches 128] [--rounds 41]
                                [--threads 1] [--clock auto|wall|cpu]

Clock: at 1 thread the calling thread's CPU time (a loaded machine inflates it far less than wall
time); at 2 threads, `cpu` is the process's CPU time, meaningful only with OMP_WAIT_POLICY=passive
in the environment (else the threads' spinning at barriers counts): the two cores' work per step,
which is what a quiet machine's wall time is made of when both threads stay busy. On a machine
loaded past its cores a 2-thread wall time measures the scheduler (steps of 35 ms read 0.4-1.3 s).
Prints the median and minimum of each, the ratio of medians (base / new: > 1 means the new build is
faster) and the quartiles of the per-round ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import fasttrain as ft   # noqa: E402
from fasttrain import backend, models   # noqa: E402
from bench.harness import load_extension_build   # noqa: E402
from layout_flow import make_step, time_settings   # noqa: E402  (bench/dev, the script's directory)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the other build's _C*.so")
    ap.add_argument("--nets", nargs="+", default=["resnet8"], choices=models.MODEL_NAMES)
    ap.add_argument("--batches", nargs="+", type=int, default=[128])
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                    help="auto: thread CPU time at 1 thread, wall time above")
    args = ap.parse_args()
    ft.set_backend("cpp")
    ft.set_num_threads(args.threads)
    new = sys.modules["fasttrain._C"]
    base = load_extension_build(args.base)
    for m in (base, new):
        m.set_num_threads(args.threads)
    if args.clock == "cpu" or (args.clock == "auto" and args.threads == 1):
        clock, what = (time.thread_time, "thread CPU") if args.threads == 1 else (time.process_time, "process CPU")
    else:
        clock, what = time.perf_counter, "wall"
    if what == "process CPU" and os.environ.get("OMP_WAIT_POLICY", "").lower() != "passive":
        print("note: OMP_WAIT_POLICY is not passive: spinning threads' CPU time is counted", flush=True)

    def use(m):
        def put():
            sys.modules["fasttrain._C"] = m
            backend._cache.clear()
        return put
    try:
        for net in args.nets:
            for batch in args.batches:
                times = time_settings(make_step(net, batch), {"base": use(base), "new": use(new)}, args.rounds, clock)
                med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
                q = np.percentile([b / n for b, n in zip(times["base"], times["new"])], [25, 50, 75])
                print(f"{net:10s} b{batch:<4d} t{args.threads} {what} ms/step: base {med['base']:7.2f} "
                      f"(min {min(times['base']) * 1e3:7.2f})  new {med['new']:7.2f} (min {min(times['new']) * 1e3:7.2f})  "
                      f"base/new {med['base'] / med['new']:.3f}x, per-round quartiles {q[0]:.3f} {q[1]:.3f} {q[2]:.3f}",
                      flush=True)
    finally:
        use(new)()


if __name__ == "__main__":
    main()
