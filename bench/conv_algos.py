"""conv2d per op and forward + backward: our algorithms (im2col, Winograd, direct) against PyTorch.

    python -m bench.conv_algos [--set resnet20|default] [--repeat 7] [--rounds 2] [--threads 2]
                               [--shapes N,C,H,W,K[,R,stride,pad] ...] [--peak-gflops G] [--no-numpy]
                               [--isa auto|avx512|avx2|portable]

Shapes are (N, C, H, W, K) with an R x R kernel, stride and padding (default 3, 1, 1). `--set
resnet20` (the default) takes every distinct convolution of the CIFAR ResNet-20 at batch 128: the
3-channel stem, 3x3 stride 1 at 16/32/64 channels on 32/16/8 pixels, the 3x3 stride-2 first
convolution of stages 2 and 3 and their 1x1 stride-2 shortcuts. `--set default` the older
bench/kernels.py shapes.

Rows: the C++ algorithms forced one by one with fasttrain._C.set_conv2d_algo (NCHW in and out, as
the Conv2d layer calls them; "auto" is what fasttrain picks, and the algorithm it picks per op is
printed beside it), "direct-blocked" (the direct kernels alone on activations already in their
NCHW16c layout, as a network that keeps that layout runs them), "wino-blocked" (3x3 stride-1
padding-1 shapes: the same entry points forced to Winograd F(2x2, 3x3) on the blocked layout),
"wino43-blocked" (forced to F(4x4, 3x3), all three ops), "stem" for inputs of fewer than 16
channels (the network's first convolution: NCHW input, blocked output, its own kernel; compared
with torch on forward + weight gradient, as a first layer needs no data gradient), PyTorch with channels_last tensors
(oneDNN's fast path, the comparator) and in its NCHW default, and the NumPy reference.
All rows of one op are timed interleaved (bench.harness.time_interleaved: one call of each per
round, the order rotating), so load from the other users of this shared machine hits them alike;
figures are medians (ms). GFLOP/s count the direct-convolution FLOPs, 2*N*K*C*R*S*P*Q per op, and
"%peak" divides them by the register-only FMA peak of the best instruction set the CPU has, measured
at the start of the run on the same thread count (bench.harness.fma_peaks; --peak-gflops G gives
a 2-thread figure instead, scaled by the thread count).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fasttrain as ft
from fasttrain import backend as B

from .harness import fma_peaks, time_interleaved, torch_or_none

RESNET20 = [(128, 3, 32, 32, 16, 3, 1, 1), (128, 16, 32, 32, 16, 3, 1, 1), (128, 16, 32, 32, 32, 3, 2, 1),
            (128, 16, 32, 32, 32, 1, 2, 0), (128, 32, 16, 16, 32, 3, 1, 1), (128, 32, 16, 16, 64, 3, 2, 1),
            (128, 32, 16, 16, 64, 1, 2, 0), (128, 64, 8, 8, 64, 3, 1, 1)]
DEFAULT = [(64, 64, 32, 32, 64, 3, 1, 1), (128, 3, 32, 32, 32, 3, 1, 1), (32, 128, 16, 16, 128, 3, 1, 1)]
OPS = ("fwd", "bwd_data", "bwd_weight")
COLS = OPS + ("fwd+bwd",)


def _geom(shape):
    N, C, H, W, K, R, st, pad = shape
    P, Q = (H + 2 * pad - R) // st + 1, (W + 2 * pad - R) // st + 1
    return N, C, H, W, K, R, st, pad, P, Q


def _arrays(shape):
    N, C, H, W, K, R, st, pad, P, Q = _geom(shape)
    rng = np.random.default_rng(0)
    a = {"x": rng.standard_normal((N, C, H, W)), "w": rng.standard_normal((K, C, R, R)) * np.sqrt(2 / (R * R * C)),
         "b": rng.standard_normal(K), "dy": rng.standard_normal((N, K, P, Q))}
    a = {k: v.astype(np.float32) for k, v in a.items()}
    a.update(y=np.empty((N, K, P, Q), np.float32), dx=np.empty((N, C, H, W), np.float32),
             dw=np.zeros((K, C, R, R), np.float32), db=np.zeros(K, np.float32))
    return a


def _ops(kernel, a, st, pad):
    """The three kernel calls, each a no-argument function; kernel(op) gives the implementation."""
    fwd, bwd_data, bwd_weight = (kernel(f"conv2d_{op}") for op in OPS)
    g = (st, st, pad, pad)
    return {"fwd": lambda: fwd(a["x"], a["w"], a["b"], a["y"], *g, False),
            "bwd_data": lambda: bwd_data(a["dy"], a["w"], a["dx"], *g),
            "bwd_weight": lambda: bwd_weight(a["x"], a["dy"], a["dw"], a["db"], *g)}


def _blocked_ops(C, a, st, pad):
    """The direct kernels on inputs already in their blocked layout (converted once, outside)."""
    N, Cc, H, W = a["x"].shape
    K, _, R, S = a["w"].shape
    g = (st, st, pad, pad)
    xb = C.to_blocked(a["x"], pad, pad, pad, pad)
    dyb = C.to_blocked(a["dy"], *C.conv2d_blocked_dy_pads(H, W, R, S, *g))
    yb = np.empty((N, (K + 15) // 16) + a["y"].shape[2:] + (16,), np.float32)
    dxb = np.empty((N, (Cc + 15) // 16, H, W, 16), np.float32)
    ops = {"fwd": lambda: C.conv2d_blocked_fwd(xb, a["w"], a["b"], yb, *g, False),
           "bwd_data": lambda: C.conv2d_blocked_bwd_data(dyb, a["w"], dxb, *g),
           "bwd_weight": lambda: C.conv2d_blocked_bwd_weight(xb, dyb, a["dw"], a["db"], *g)}
    # the network's first convolution: NCHW input straight into the stem kernel, blocked output,
    # no data gradient (its bwd_data column repeats the blocked kernel's, only to fill the row)
    stem = {"fwd": lambda: C.conv2d_stem_fwd(a["x"], a["w"], a["b"], yb, *g, False),
            "bwd_data": ops["bwd_data"],
            "bwd_weight": lambda: C.conv2d_stem_bwd_weight(a["x"], dyb, a["dw"], a["db"], *g)}
    return ops, (stem if Cc < 16 else None)


def _torch_ops(torch, a, st, pad, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, w, dy = (torch.from_numpy(a[k]).contiguous(memory_format=fmt) for k in ("x", "w", "dy"))
    b = torch.from_numpy(a["b"])
    conv_bwd = torch.ops.aten.convolution_backward
    args = (dy, x, w, [w.shape[0]], [st, st], [pad, pad], [1, 1], False, [0, 0], 1)
    return {"fwd": lambda: torch.conv2d(x, w, b, st, pad), "bwd_data": lambda: conv_bwd(*args, [True, False, False]),
            "bwd_weight": lambda: conv_bwd(*args, [False, True, True])}


def _fits_winograd(shape):
    return shape[5] == 3 and shape[6] == 1


def run(shapes, repeat, rounds, numpy_too=True, peak_gflops=None, stat="median", clock=None):
    from fasttrain import _C as C
    C.set_num_threads(ft.settings.num_threads)  # the module may load after set_num_threads
    torch = torch_or_none()
    if torch is not None:
        torch.set_num_threads(ft.settings.num_threads)
    if peak_gflops is None:
        peak = max(fma_peaks([]).values()) / 1e9
        print(f"FMA peak measured now: {peak:.0f} GFLOP/s at {ft.settings.num_threads} threads")
    else:
        peak = peak_gflops * ft.settings.num_threads / 2
    cpp = lambda op: getattr(C, op)  # noqa: E731
    ref = lambda op: B.kernel(op, backend="numpy")  # noqa: E731
    summary = []
    for shape in shapes:
        N, Cc, H, W, K, R, st, pad, P, Q = _geom(shape)
        a = _arrays(shape)
        flops = 2.0 * N * K * Cc * R * R * P * Q
        algos = ["auto", "im2col"] + (["winograd"] if _fits_winograd(shape) else []) + ["direct"]
        choice = [C.conv2d_choice(op, N, Cc, H, W, K, R, R, st, st, pad, pad) for op in OPS]
        choice_blocked = [C.conv2d_choice(op, N, Cc, H, W, K, R, R, st, st, pad, pad, blocked=True) for op in OPS]

        def forced(algo, ops):
            # each call runs under its own algorithm, whatever the previous call set
            return {op: (lambda f=f: (C.set_conv2d_algo(algo), f())) for op, f in ops.items()}

        rows = {algo: forced(algo, _ops(cpp, a, st, pad)) for algo in algos}
        blocked, stem = _blocked_ops(C, a, st, pad)
        rows["direct-blocked"] = forced("direct", blocked)
        if R == 3 and st == 1 and pad == 1:
            rows["wino-blocked"] = forced("winograd-blocked", blocked)
            rows["wino43-blocked"] = forced("winograd43-blocked", blocked)
        if stem is not None:
            rows["stem"] = stem
        if torch is not None:
            rows["torch-cl"] = _torch_ops(torch, a, st, pad, True)
            rows["torch-nchw"] = _torch_ops(torch, a, st, pad, False)
        if numpy_too:
            rows["numpy"] = _ops(ref, a, st, pad)
        med: dict[tuple[str, str], float] = {}
        reps = {who: (1 if who == "numpy" else repeat * rounds) for who in rows}
        for op in OPS:
            samples = time_interleaved({who: ops[op] for who, ops in rows.items()}, reps,
                                       **({"clock": clock} if clock else {}))
            for who, s in samples.items():
                med[who, op] = (statistics.median(s) if stat == "median" else min(s)) * 1e3
        C.set_conv2d_algo("auto")
        for who in rows:
            med[who, "fwd+bwd"] = sum(med[who, op] for op in OPS)
            med[who, "fwd+bw_w"] = med[who, "fwd"] + med[who, "bwd_weight"]  # a first layer's work
        print(f"(N, C, H, W, K) = {(N, Cc, H, W, K)}, {R}x{R} stride {st} pad {pad}, {ft.settings.num_threads} threads, "
              f"{flops / 1e9:.3f} GFLOP per op; auto runs {'/'.join(choice)} (fwd/bwd_data/bwd_weight), on blocked "
              f"activations {'/'.join(choice_blocked)}; "
              f"ms, {stat}s of {repeat * rounds} interleaved samples")
        print(f"  {'':15}" + "".join(f"{c:>11}" for c in COLS) + f"{'GFLOP/s':>9}{'%peak':>7}{'torch-cl/x':>11}")
        tcl = med.get(("torch-cl", "fwd+bwd"))
        for who in rows:
            tot = med[who, "fwd+bwd"]
            gf = 3 * flops / tot / 1e6
            ratio = f"{tcl / tot:11.2f}" if tcl else ""
            print(f"  {who:15}" + "".join(f"{med[who, c]:11.2f}" for c in COLS) + f"{gf:9.0f}{100 * gf / peak:7.0f}" + ratio)
        ratios = []
        if "winograd" in algos:
            ratios.append(f"im2col/winograd {med['im2col', 'fwd+bwd'] / med['winograd', 'fwd+bwd']:.2f}x")
        ratios += [f"{who}/auto {med[who, 'fwd+bwd'] / med['auto', 'fwd+bwd']:.2f}x" for who in ("torch-cl", "numpy")
                   if (who, "fwd+bwd") in med]
        if "stem" in rows and tcl:
            ratios.append(f"first layer (fwd + bwd_weight, no data gradient): torch-cl/stem "
                          f"{med['torch-cl', 'fwd+bw_w'] / med['stem', 'fwd+bw_w']:.2f}x, stem "
                          f"{2 * flops / med['stem', 'fwd+bw_w'] / 1e6:.0f} GFLOP/s")
        print("  " + ", ".join(ratios), flush=True)
        summary.append((shape, choice, med))
    if torch is not None and len(summary) > 1:
        print("\nsummary: fwd+bwd, torch channels_last time / ours (> 1: ours faster)")
        print("  (stem: the first layer's forward + weight gradient, torch-cl's same two ops / the stem kernel's)")
        print(f"  {'shape N,C,H,W,K,R,stride,pad':34}{'auto picks':>28}{'auto':>8}{'direct':>8}{'blocked':>9}"
              f"{'wino-bl':>9}{'wino43':>9}{'stem':>7}")
        for shape, choice, med in summary:
            t = med["torch-cl", "fwd+bwd"]
            stem = (f"{med['torch-cl', 'fwd+bw_w'] / med['stem', 'fwd+bw_w']:7.2f}" if ("stem", "fwd") in med else "")
            wino = "".join(f"{t / med[who, 'fwd+bwd']:9.2f}" if (who, "fwd") in med else f"{'':9}"
                           for who in ("wino-blocked", "wino43-blocked"))
            print(f"  {','.join(map(str, shape)):34}{'/'.join(choice):>28}" +
                  "".join(f"{t / med[who, 'fwd+bwd']:8.2f}" for who in ("auto", "direct")) +
                  f"{t / med['direct-blocked', 'fwd+bwd']:9.2f}" + wino + stem)


def _shape(text):
    v = [int(s) for s in text.split(",")]
    if len(v) not in (5, 8):
        raise argparse.ArgumentTypeError(f"--shapes: expected N,C,H,W,K or N,C,H,W,K,R,stride,pad, got {text!r}")
    return tuple(v) if len(v) == 8 else tuple(v) + (3, 1, 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=2, help="samples per row = repeat * rounds")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-numpy", action="store_true", help="skip the (slow) NumPy reference")
    ap.add_argument("--set", choices=("resnet20", "default"), default="resnet20")
    ap.add_argument("--shapes", nargs="*", type=_shape, default=None, help="N,C,H,W,K[,R,stride,pad]")
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="min: the least-disturbed sample, for a machine other jobs load heavily")
    ap.add_argument("--peak-gflops", type=float, default=None,
                    help="FMA peak at 2 threads for the %%peak column (default: measured at the start)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="one thread, timed by the thread's CPU time (time.thread_time): per-core figures that "
                         "hold on a machine so loaded that wall time measures the scheduler (use with --peak-gflops)")
    ap.add_argument("--isa", choices=("auto", "avx512", "avx2", "portable"), default="auto",
                    help="the direct engine's instruction set (fasttrain._C.set_conv2d_isa): e.g. avx2 measures "
                         "the rule for AVX2-only machines on an AVX-512 one")
    args = ap.parse_args(argv)
    if args.cpu_time and args.threads not in (None, 1):
        ap.error(f"--cpu-time: times one thread, got --threads {args.threads}")
    if args.threads or args.cpu_time:
        ft.set_num_threads(1 if args.cpu_time else args.threads)
    shapes = args.shapes or (RESNET20 if args.set == "resnet20" else DEFAULT)
    from fasttrain import _C

    _C.set_conv2d_isa(args.isa)
    try:
        run(shapes, args.repeat, args.rounds, not args.no_numpy, args.peak_gflops, args.stat,
            time.thread_time if args.cpu_time else None)
    finally:
        _C.set_conv2d_isa("auto")


if __name__ == "__main__":
    main()
