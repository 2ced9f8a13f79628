"""The bench chart: a roofline (Williams, Waterman & Patterson, "Roofline: an insightful visual
performance model for multicore architectures", CACM 2009) of every kernel record, and a small
panel of end-to-end training throughput.

Roofline: x = operational intensity (declared FLOPs / declared bytes of the kernel), y = attained
GFLOP/s (declared FLOPs / median time), both log scale. The roofs are what the same run measured:
the main-memory bandwidth slope, and flat ceilings at the FMA-loop peak per instruction set and at
sgemm. A point under the slope is memory bound, under a ceiling compute bound; its distance below
the roof is the headroom. Ours are filled markers, PyTorch's variants hollow, one colour per kernel.
"""
from __future__ import annotations

import numpy as np

from .harness import OURS, is_torch_cpu

MARKERS = {"cpp": "o", "numba": "s", "torch": "^", "torch-cl": "v", "torch-fused": "v",
           "torch-compile": "D"}


def _points(records):
    return [r for r in records if r.suite == "kernels" and r.flops and r.bytes and r.median_s > 0
            and (r.backend in OURS or is_torch_cpu(r.backend))]


def plot(records, limits, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.suite == "train"]
    fig, axes = plt.subplots(1, 2 if train else 1, figsize=(15 if train else 9, 6.5),
                             gridspec_kw={"width_ratios": [3, 2]} if train else None, squeeze=False)
    ax = axes[0][0]
    pts = _points(records)
    oi = [r.flops / r.bytes for r in pts]
    lo, hi = (min(oi + [0.05]) / 2, max(oi + [100.0]) * 2)
    xs = np.logspace(np.log10(lo), np.log10(hi), 200)
    bw = limits.bandwidth
    ceilings = [(f"FMA peak AVX-512 {limits.peaks['avx512'] / 1e9:.0f} GFLOP/s", limits.peaks.get("avx512"), "k")
                if "avx512" in limits.peaks else None,
                (f"FMA peak AVX2 {limits.peaks['avx2'] / 1e9:.0f} GFLOP/s", limits.peaks.get("avx2"), "0.35")
                if "avx2" in limits.peaks else None,
                (f"sgemm (OpenBLAS) {limits.flops / 1e9:.0f} GFLOP/s", limits.flops, "tab:purple")]
    for label, peak, colour in filter(None, ceilings):
        ax.plot(xs, np.minimum(bw * xs, peak) / 1e9, color=colour, lw=1.2, label=label)
    ax.plot(xs, bw * xs / 1e9, color="tab:gray", lw=0.8, ls=":",
            label=f"memory bandwidth {bw / 1e9:.1f} GB/s (STREAM, main memory)")
    names = sorted({r.name for r in pts})
    colours = {n: plt.cm.tab20(i % 20) for i, n in enumerate(names)}
    for r in pts:
        filled = r.backend in OURS
        ax.scatter(r.flops / r.bytes, r.flops / r.median_s / 1e9, marker=MARKERS.get(r.backend, "o"), s=45,
                   facecolors=colours[r.name] if filled else "none",
                   edgecolors=colours[r.name], linewidths=1.3, zorder=3)
    for n in names:
        ax.scatter([], [], color=colours[n], marker="s", label=n)
    for b, m in MARKERS.items():
        if any(r.backend == b for r in pts):
            ax.scatter([], [], marker=m, facecolors="k" if b in OURS else "none", edgecolors="k",
                       label=f"[{b}]")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("operational intensity (FLOP / byte, declared)")
    ax.set_ylabel("attained GFLOP/s")
    ax.set_title("kernels: filled = fasttrain, hollow = PyTorch variants")
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=6.5, loc="lower right", ncol=2)
    if train:
        _train_panel(axes[0][1], train)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _train_panel(ax, train):
    workloads = list(dict.fromkeys((r.name.removesuffix("_step"), r.shape.split(",")[0].strip("(")) for r in train))
    backends = list(dict.fromkeys(r.backend for r in train))
    by = {(r.name.removesuffix("_step"), r.shape.split(",")[0].strip("("), r.backend): r for r in train}
    width = 0.8 / max(len(backends), 1)
    for i, b in enumerate(backends):
        vals = [by[(n, bs, b)].extra.get("images_per_s", 0) if (n, bs, b) in by else 0 for n, bs in workloads]
        ax.bar(np.arange(len(workloads)) + i * width, vals, width, label=b)
    ax.set_xticks(np.arange(len(workloads)) + width * (len(backends) - 1) / 2)
    ax.set_xticklabels([f"{n}\nbatch {bs}" for n, bs in workloads], fontsize=7)
    ax.set_ylabel("training images/s (fwd + bwd + Adam)")
    ax.set_title("end to end, same run")
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", lw=0.3)
