"""The direct engine's weight gradient alone, per ResNet-20 convolution, beside its forward and
PyTorch channels_last's weight gradient (aten.convolution_backward with output_mask
[False, True, True]: dw and db only), all on inputs already in their layouts, interleaved.

    python bench/dev/wgrad.py [--threads 2] [--repeat 5] [--rounds 2] [--stat median|min]
                              [--cpu-time] [--base PATH_TO_OTHER_C.so] [--shapes N,C,H,W,K,R,stride,pad ...]

Columns: ms (median, or min with --stat min), GFLOP/s (2*N*K*C*R*S*P*Q per op) and % of the FMA
peak measured at the start (bench.harness.fma_peaks). --base loads a second build of the
extension (a copy of an older _C*.so) and times its weight gradient in the same rounds: an A/B
of a kernel change that the machine's load hits alike. --cpu-time: one thread timed by its CPU
time, for a machine loaded by other jobs.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import numpy as np

import fasttrain as ft

from bench.conv_algos import RESNET20, _arrays, _blocked_ops, _geom, _shape
from bench.harness import fma_peaks, time_interleaved, torch_or_none


def _load(path):
    spec = importlib.util.spec_from_file_location("_C", path)  # the init function is PyInit__C
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(C, a, st, pad, tag=""):
    """The forward (tag "" only) and the weight gradient on blocked inputs: the stem's kernels below
    16 input channels, else the blocked ones."""
    ops, stem = _blocked_ops(C, a, st, pad)
    use = stem or ops
    rows = {} if tag else {"fwd": use["fwd"]}
    rows[("stem_wgrad" if stem else "wgrad") + tag] = use["bwd_weight"]
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--stat", choices=("median", "min"), default="median")
    ap.add_argument("--cpu-time", action="store_true")
    ap.add_argument("--base", default=None, help="another build's _C*.so, timed beside this one")
    ap.add_argument("--shapes", nargs="*", type=_shape, default=None)
    args = ap.parse_args(argv)
    ft.set_num_threads(1 if args.cpu_time else (args.threads or ft.settings.num_threads))
    from fasttrain import _C as C
    nt = ft.settings.num_threads
    C.set_num_threads(nt)
    base = _load(args.base) if args.base else None
    if base is not None:
        base.set_num_threads(nt)
    torch = torch_or_none()
    peak = max(fma_peaks([]).values()) / 1e9
    print(f"{nt} threads, FMA peak {peak:.0f} GFLOP/s; ms {args.stat}s of {args.repeat * args.rounds} interleaved samples")
    hdr = ["fwd", "wgrad", "torch-cl wgrad"] + (["base wgrad"] if base else [])
    print(f"{'shape N,C,H,W,K,R,stride,pad':30}" + "".join(f"{h:>22}" for h in hdr) + f"{'torch/ours':>11}" +
          (f"{'base/ours':>10}" if base else ""))
    for shape in args.shapes or RESNET20:
        N, Cc, H, W, K, R, st, pad, P, Q = _geom(shape)
        a = _arrays(shape)
        flops = 2.0 * N * K * Cc * R * R * P * Q
        rows = _rows(C, a, st, pad)
        if base is not None:
            rows.update(_rows(base, a, st, pad, tag="_base"))
        if torch is not None:
            x, w, dy = (torch.from_numpy(a[k]).contiguous(memory_format=torch.channels_last) for k in ("x", "w", "dy"))
            cb = torch.ops.aten.convolution_backward
            targs = (dy, x, w, [K], [st, st], [pad, pad], [1, 1], False, [0, 0], 1, [False, True, True])
            rows["torch"] = lambda: cb(*targs)
        s = time_interleaved(rows, {k: args.repeat * args.rounds for k in rows},
                             **({"clock": time.thread_time} if args.cpu_time else {}))
        t = {k: (statistics.median(v) if args.stat == "median" else min(v)) * 1e3 for k, v in s.items()}
        ours = t.get("wgrad", t.get("stem_wgrad"))
        cols = [t["fwd"], ours, t.get("torch")] + ([t.get("wgrad_base", t.get("stem_wgrad_base"))] if base else [])
        cell = lambda ms: "" if ms is None else f"{ms:7.2f} {flops / ms / 1e6:5.0f} {100 * flops / ms / 1e6 / peak:3.0f}%"  # noqa: E731
        line = f"{','.join(map(str, shape)):30}" + "".join(f"{cell(c):>22}" for c in cols)
        line += f"{t['torch'] / ours:11.2f}" if "torch" in t else f"{'':11}"
        if base:
            line += f"{cols[3] / ours:10.2f}"
        print(line + ("  (stem)" if Cc < 16 else ""), flush=True)


if __name__ == "__main__":
    main()
