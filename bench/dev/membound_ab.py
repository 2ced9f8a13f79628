"""Interleaved A/B of the memory-bound bench rows (bench/blocked.py and the NCHW batchnorm / pooling
rows of bench/kernels.py): another build of fasttrain._C (e.g. main's, copied aside before a change)
against this tree's, in one process, alternating call by call in rounds so machine load hits both
alike. Prints per row: median and min per-call wall time of each build, the median of per-round
ratios (old / new), and with --probe the new build's % of the bench's two bandwidth limits at the row's
working set: the STREAM probes (bench.harness.stream_probes) run in the same rounds as the kernels, so
on a loaded machine limit and kernel see the same load (the bench's own probes run before and after a
row, and swing 2-100x against it under load); "% fresh" against the best out-of-place probe (the
bench's limit for a writes_fresh row), "% in-place" against the best of all.

    python bench/dev/membound_ab.py --base /tmp/base_C.so [--only blocked_bn_relu] [--rounds 41] [--threads 2] [--probe]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fasttrain as ft
from fasttrain import _C
from bench import blocked, kernels
from bench.harness import load_extension_build, stream_probes


CLOCK = time.perf_counter


def per_call(fn, calls):
    """The lower quartile of `calls` individually timed calls (robust to the scheduler ticks a busy
    machine adds to some calls; see bench/harness.time_interleaved)."""
    times = []
    for _ in range(calls):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    times.sort()
    return times[len(times) // 4]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--new", default=None, help="another build as the new side (default: this tree's _C)")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpu", action="store_true", help="time the calling thread's CPU time (use with --threads 1)")
    ap.add_argument("--probe", action="store_true", help="also time the STREAM probes at each row's working set")
    args = ap.parse_args()
    global CLOCK
    if args.cpu:
        CLOCK = time.thread_time
    ft.set_num_threads(args.threads)
    _C.set_num_threads(args.threads)  # (the registry hands it on only once it has loaded _C)
    base = load_extension_build(args.base)
    base.set_num_threads(args.threads)
    new = _C
    if args.new:
        import importlib.machinery
        import importlib.util
        loader = importlib.machinery.ExtensionFileLoader("fasttrain_new._C", args.new)
        new = importlib.util.module_from_spec(importlib.util.spec_from_file_location("fasttrain_new._C", args.new,
                                                                                      loader=loader))
        loader.exec_module(new)
        new.set_num_threads(args.threads)
    entries = blocked.entries(False) + [e for e in kernels.entries(False)
                                        if e.name in ("batchnorm_fwd_bwd", "bn_relu_fused", "bn_add_relu_fused",
                                                      "maxpool2x2_fwd_bwd", "maxpool2x2_argmax_fwd_bwd")]
    for e in entries:
        if args.only and not any(s in e.name for s in args.only):
            continue
        mods = {"old": base, "new": new}
        arrs = {k: e.inputs() for k in mods}
        fns = {k: (lambda m=m, a=arrs[k]: e.run(lambda op: getattr(m, op), a)) for k, m in mods.items()}
        for k in fns:
            fns[k]()
        for name in e.outputs:  # same answer from both builds
            a, b = arrs["old"][name], arrs["new"][name]
            if not np.array_equal(a, b):
                err = float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(a).max(), 1e-30))
                print(f"  {e.name} {e.shape}: output {name} differs between builds (rel {err:.1e})")
        probes = {}
        if args.probe:
            probes = {name: (fn, nbytes, oop) for name, fn, nbytes, oop in stream_probes(
                kernels._working_set(arrs["new"], e.touched))}
            for name, (fn, _, _) in probes.items():
                fn()
                fns[name] = fn
        t1 = per_call(fns["new"], 3)
        calls = max(5, min(200, int(0.01 / max(t1, 1e-6))))
        s = {k: [] for k in fns}
        ratios = []
        for r in range(args.rounds):
            order = list(fns) if r % 2 == 0 else list(fns)[::-1]
            got = {}
            for k in order:
                time.sleep(0.002)
                got[k] = per_call(fns[k], calls)
                s[k].append(got[k])
            ratios.append(got["old"] / got["new"])
        mb = e.nbytes / 1e6
        pct = ""
        if probes:
            rate = {name: nbytes / statistics.median(s[name]) for name, (_, nbytes, _) in probes.items()}
            fresh = max(r for name, r in rate.items() if probes[name][2])
            t_new = statistics.median(s["new"])
            pct = (f"  new: {100 * e.nbytes / t_new / fresh:4.0f} % fresh, {100 * e.nbytes / t_new / max(rate.values()):4.0f} %"
                   f" in-place ({' '.join(f'{n[7:]} {r / 1e9:.0f}' for n, r in rate.items())} GB/s)")
        print(f"{e.name:<26} {str(e.shape):<18} old {statistics.median(s['old'])*1e3:7.3f} (min {min(s['old'])*1e3:7.3f})"
              f"  new {statistics.median(s['new'])*1e3:7.3f} (min {min(s['new'])*1e3:7.3f}) ms"
              f"  old/new median {statistics.median(ratios):5.3f}  [{mb:.1f} MB declared]{pct}", flush=True)


if __name__ == "__main__":
    main()
