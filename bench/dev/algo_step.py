"""Whole training steps (forward, backward, Adam) of a net under two convolution algorithm settings,
interleaved step by step in one process, so a shared machine's load hits both alike.

    python bench/dev/algo_step.py [--nets resnet20 resnet8 convnet_classic] [--batches 128]
                                  [--algos auto direct] [--rounds 9] [--threads 2] [--cpu-time]

Each setting is fasttrain._C.set_conv2d_algo's name ("direct": every groups-1 convolution on the
direct kernels; "auto": the engine's own choice, Winograd on the blocked layout included). Prints
the median and minimum step time per setting and the ratio of medians. --cpu-time: the process's
CPU time instead of wall time (on a loaded machine, with --threads 1, it counts only this
process's work; with more threads it also counts OpenMP's spinning at barriers).
"""
from __future__ import annotations

import argparse
import statistics
import time

import fasttrain as ft
from fasttrain import models
from layout_flow import make_step, time_settings   # bench/dev is the script's directory, first on sys.path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nets", nargs="+", default=["resnet20", "resnet8", "convnet_classic"], choices=models.MODEL_NAMES)
    ap.add_argument("--batches", nargs="+", type=int, default=[128])
    ap.add_argument("--algos", nargs="+", default=["auto", "direct"])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpu-time", action="store_true")
    args = ap.parse_args()
    ft.set_backend("cpp")
    ft.set_num_threads(args.threads)
    from fasttrain import _C
    clock = time.process_time if args.cpu_time else time.perf_counter

    settings = {a: (lambda a=a: _C.set_conv2d_algo(a)) for a in args.algos}
    for net in args.nets:
        for batch in args.batches:
            times = time_settings(make_step(net, batch), settings, args.rounds, clock)
            _C.set_conv2d_algo("auto")
            med = {a: statistics.median(v) * 1e3 for a, v in times.items()}
            cols = "  ".join(f"{a} {med[a]:7.1f} (min {min(times[a]) * 1e3:7.1f})" for a in args.algos)
            ratio = f"  {args.algos[1]}/{args.algos[0]} {med[args.algos[1]] / med[args.algos[0]]:.3f}x" if len(args.algos) > 1 else ""
            print(f"{net:16s} b{batch:<4d} ms/step: {cols}{ratio}", flush=True)


if __name__ == "__main__":
    main()
