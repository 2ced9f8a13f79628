"""Whole training steps (forward, backward, Adam) with the batchnorm backward's sums formed in the
epilogue of the convolution data gradient that writes its incoming gradient (fasttrain.nn.norm
.FUSE_BWD_SUMS on) against each batchnorm forming them itself, interleaved step by step
in one process, so a shared machine's load hits both alike.

    python bench/dev/bn_sums_step.py [--nets resnet8 resnet20] [--batches 128] [--rounds 15]
                                     [--threads 2] [--cpu-time]

Prints the median and minimum step time of each and the ratio of medians (fused / unfused).
--cpu-time: the process's CPU time instead of wall time (with --threads 1 on a loaded machine it
counts only this process's work).
"""
from __future__ import annotations

import argparse
import statistics
import time

import fasttrain as ft
from fasttrain import models
from fasttrain.nn import norm
from layout_flow import make_step, time_settings   # bench/dev is the script's directory, first on sys.path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nets", nargs="+", default=["resnet8", "resnet20"], choices=models.MODEL_NAMES)
    ap.add_argument("--batches", nargs="+", type=int, default=[128])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpu-time", action="store_true")
    args = ap.parse_args()
    ft.set_backend("cpp")
    ft.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    default = norm.FUSE_BWD_SUMS
    settings = {"fused": lambda: setattr(norm, "FUSE_BWD_SUMS", True),
                "unfused": lambda: setattr(norm, "FUSE_BWD_SUMS", False)}
    names = list(settings)
    for net in args.nets:
        for batch in args.batches:
            times = time_settings(make_step(net, batch), settings, args.rounds, clock)
            norm.FUSE_BWD_SUMS = default
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            cols = "  ".join(f"{k} {med[k]:7.2f} (min {min(times[k]) * 1e3:7.2f})" for k in names)
            print(f"{net:10s} b{batch:<4d} ms/step: {cols}  fused/unfused {med['fused'] / med['unfused']:.3f}x",
                  flush=True)


if __name__ == "__main__":
    main()
