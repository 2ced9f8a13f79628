"""Each direct-convolution call of a training step, in the network (cold: inputs just written by a
batchnorm, caches holding other layers' data) against the same call repeated on its own arrays
(hot), per op and per distinct shape: ms per call, GFLOP/s and % of the FMA peak.

    python bench/dev/conv_innet.py resnet8 128 [--steps 5] [--hot 7] [--peak-gflops G]

The C++ entry points are wrapped on the fasttrain._C module for the measured steps (the layers look
them up there at each call), so the network runs exactly as in training. GFLOP/s count the
direct-convolution FLOPs 2*N*K*C*R*S*P*Q of each op; the peak is the register-only FMA loop's,
measured at the start (bench.harness.fma_peaks) unless given.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np

import fasttrain as ft
from fasttrain import _C, models
from layout_flow import make_step  # bench/dev, the directory of this script

OPS = ("conv2d_blocked_fwd", "conv2d_blocked_bwd_data", "conv2d_blocked_bwd_weight", "conv2d_stem_fwd",
       "conv2d_stem_bwd_weight")
SHORT = {"conv2d_blocked_fwd": "fwd", "conv2d_blocked_bwd_data": "dgrad", "conv2d_blocked_bwd_weight": "wgrad",
         "conv2d_stem_fwd": "stem fwd", "conv2d_stem_bwd_weight": "stem wgrad"}


def _key(op, args, kw):
    """(op, N, C, H, W, K, R, stride, pad) and the op's FLOPs from a call's arguments."""
    w = args[2] if op.endswith("bwd_weight") else args[1]
    K, C, R, S = w.shape
    sh, ph = args[4], args[6]
    if op == "conv2d_blocked_bwd_data":
        N, _, H, W, _ = args[2].shape
        P, Q = (H + 2 * ph - R) // sh + 1, (W + 2 * ph - S) // sh + 1
    else:   # the forwards and weight gradients: x first
        x = args[0]
        halo = 0 if x.ndim == 4 else (ph if kw.get("halo_x", -1) == -1 else kw["halo_x"])
        N, H, W = x.shape[0], x.shape[2] - 2 * halo, x.shape[3] - 2 * halo
        P, Q = (H + 2 * ph - R) // sh + 1, (W + 2 * ph - S) // sh + 1
    return (op, N, C, H, W, K, R, sh, ph), 2.0 * N * K * C * R * S * P * Q


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("net", choices=models.MODEL_NAMES)
    ap.add_argument("batch", type=int)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--hot", type=int, default=7, help="repeats of each call on its own arrays")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cpu-time", action="store_true",
                    help="one thread timed by its CPU time (time.thread_time), for a machine loaded past its cores")
    ap.add_argument("--peak-gflops", type=float, default=None, help="the FMA peak (default: measured now)")
    args = ap.parse_args()
    if args.cpu_time and args.threads not in (None, 1):
        ap.error(f"--cpu-time: times one thread, got --threads {args.threads}")
    if args.threads or args.cpu_time:
        ft.set_num_threads(1 if args.cpu_time else args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    _C.set_num_threads(ft.settings.num_threads)
    ft.set_backend("cpp")
    if args.peak_gflops is None:
        from bench.harness import fma_peaks
        peak = max(fma_peaks([]).values()) / 1e9
    else:
        peak = args.peak_gflops
    step = make_step(args.net, args.batch)
    step()
    step()
    cold = defaultdict(list)
    calls = {}
    flops = {}
    originals = {op: getattr(_C, op) for op in OPS}

    def wrap(op, f):
        def timed(*a, **kw):
            t = clock()
            f(*a, **kw)
            dt = clock() - t
            key, fl = _key(op, a, kw)
            cold[key].append(dt)
            flops[key] = fl
            if key not in calls:   # a copy, so the hot repeats do not disturb the network's arrays
                calls[key] = (f, [v.copy() if isinstance(v, np.ndarray) else v for v in a], dict(kw))
        return timed

    for op, f in originals.items():
        setattr(_C, op, wrap(op, f))
    try:
        t0 = clock()
        for _ in range(args.steps):
            step()
        step_ms = (clock() - t0) / args.steps * 1e3
    finally:
        for op, f in originals.items():
            setattr(_C, op, f)
    hot = {}
    for key, (f, a, kw) in calls.items():
        f(*a, **kw)
        s = []
        for _ in range(args.hot):
            t = clock()
            f(*a, **kw)
            s.append(clock() - t)
        hot[key] = statistics.median(s)
    print(f"{args.net} batch {args.batch}, {ft.settings.num_threads} threads: step {step_ms:.1f} ms "
          f"(mean of {args.steps}); FMA peak {peak:.0f} GFLOP/s; in-network = median per call, hot = median of "
          f"{args.hot} repeats of the same call")
    print(f"  {'op':11}{'N,C,H,W,K,R,stride,pad':26}{'calls':>6}{'ms/step':>9}{'in-net ms':>10}{'GF/s':>7}"
          f"{'%pk':>5}{'hot ms':>8}{'GF/s':>7}{'%pk':>5}")
    total = defaultdict(float)
    for key in sorted(cold, key=lambda k: (OPS.index(k[0]), k[1:])):
        per_step = len(cold[key]) / args.steps
        c, h = statistics.median(cold[key]), hot[key]
        gc, gh = flops[key] / c / 1e9, flops[key] / h / 1e9
        total[SHORT[key[0]]] += c * per_step * 1e3
        print(f"  {SHORT[key[0]]:11}{','.join(map(str, key[1:])):26}{per_step:6.0f}{c * per_step * 1e3:9.2f}"
              f"{c * 1e3:10.3f}{gc:7.0f}{100 * gc / peak:5.0f}{h * 1e3:8.3f}{gh:7.0f}{100 * gh / peak:5.0f}")
    print("  per step: " + ", ".join(f"{op} {ms:.1f} ms" for op, ms in total.items()))


if __name__ == "__main__":
    main()
