"""Bench driver: measures the machine's limits, then the chosen suites, in one process, and
reports a table, JSON lines, ratios, a PNG chart and (optionally) bench/RESULTS.md."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import fasttrain as ft

from . import harness


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fasttrain bench", description=__doc__)
    ap.add_argument("suite", nargs="*", default=["kernels"], choices=["kernels", "collectives", "train", "gpu", "all"],
                    help="one or more suites (default: kernels)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds (used by the tests)")
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per measurement (median reported)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="kernels suite: only the rows whose name contains one of these strings")
    ap.add_argument("--json", default=None, help="write JSON lines here")
    ap.add_argument("--png", default=None, help="write the chart here")
    ap.add_argument("--results", default=None, help="write a Markdown report here (e.g. bench/RESULTS.md)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: the package setting)")
    ap.add_argument("--nets", nargs="*", default=None, help="train suite: the nets (default: all of bench.train.NETS)")
    ap.add_argument("--batches", nargs="*", type=int, default=None, help="train suite: batch sizes (default 128 32)")
    ap.add_argument("--no-compile", action="store_true", help="train suite: leave out the torch.compile variant")
    ap.add_argument("--no-memory", action="store_true", help="train suite: skip the peak-memory subprocesses")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.threads:
        ft.set_num_threads(args.threads)

    t0 = time.time()
    args.load_start = _load()
    print(f"machine: {_machine()}")
    print(f"build: {json.dumps(ft.build_info(), default=str)}")
    limits, records = harness.measure_limits(args.quick)
    print(f"limits: bandwidth {limits.bandwidth / 1e9:.1f} GB/s from main memory ({limits.bandwidth_source}; "
          f"{(limits.bandwidth_out_of_place or limits.bandwidth) / 1e9:.1f} GB/s out of place), "
          f"sgemm {limits.flops / 1e9:.1f} GFLOP/s ({limits.flops_source}), FMA peak "
          + (", ".join(f"{isa} {v / 1e9:.0f} GFLOP/s" for isa, v in limits.peaks.items()) or "not measured"))
    suites = ["kernels", "collectives", "train", "gpu"] if "all" in args.suite else list(dict.fromkeys(args.suite))
    for suite in suites:
        print(f"[{suite}]")
        if suite == "kernels":
            from . import kernels

            records += kernels.run(limits, quick=args.quick, repeat=args.repeat, only=args.only)
        elif suite == "train":
            from . import train

            from . import memory

            kw = {k: tuple(v) for k, v in (("nets", args.nets), ("batches", args.batches)) if v}
            records += train.run(limits, quick=args.quick, repeat=args.repeat, compile_torch=not args.no_compile, **kw)
            if not args.no_memory:
                records += memory.run("resnet8", 8, 1) if args.quick else memory.run("resnet20", 128, 3)
        elif suite == "collectives":
            records += _collectives(args.quick)
        elif suite == "gpu":
            from . import gpu

            gpu_records = gpu.run(quick=args.quick, repeat=args.repeat)
            records += gpu_records
            for line in gpu.summary(gpu_records):
                print(f"  {line}")
    harness.annotate_vs_torch(records)
    print()
    harness.print_table(records)
    rs = harness.ratios(records)
    if rs:
        print("\nratios (alternative time / ours, same run):")
        for r in rs:
            vs = f"{r['vs']} ({r['variant']})" if "variant" in r else r["vs"]
            print(f"  {r['name']:<20} {r['shape'][:26]:<26} {r['ours']:>5} vs {vs:<26} {r['speedup']:7.2f}x")
    if args.json:
        harness.write_jsonl(args.json, records)
    if args.png:
        from . import roofline

        roofline.plot(records, limits, args.png)
    if args.results:
        _write_results(args.results, records, rs, limits, args, time.time() - t0)
    print(f"\ndone in {time.time() - t0:.1f} s")
    return 0


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def _load_note(*loads: str) -> str:
    """What the load averages around a run say about its figures: above the core count, other processes
    shared the cores (the run's own threads count as load too, so up to the core count is a quiet run)."""
    values = [float(v) for v in loads if v != "n/a"]
    if not values:
        return "(not available on this system)"
    if max(values) > (os.cpu_count() or 1):
        return ("(above the core count: other processes shared the cores and the memory bus, so every figure of "
                "this run is noisy, the limits included; ratios are interleaved so both sides see the same load)")
    return "(at most the core count, which the run's own threads account for)"


def _collectives(quick: bool) -> list:
    """Collectives run under mpiexec in their own processes; their JSON lines are read back."""
    import tempfile

    script = Path(__file__).with_name("collectives.py")
    if not script.exists():
        print("  (bench/collectives.py not present)")
        return []
    out = Path(tempfile.mkdtemp()) / "collectives.jsonl"
    cmd = [sys.executable, str(script), "--json", str(out)] + (["--quick"] if quick else [])
    subprocess.run(cmd, check=True)
    records = []
    fields = harness.Record.__dataclass_fields__
    for line in out.read_text().splitlines():
        d = json.loads(line)
        # one shape string per (size, ranks) so ring and MPI of one run pair up in the ratios
        d.setdefault("shape", f"{d.get('size')} B, K={d.get('ranks')}")
        d.setdefault("threads", 1)
        extra = {k: d.pop(k) for k in list(d) if k not in fields}
        extra.update(d.pop("extra", {}))
        if d.get("bytes") and d.get("median_s"):
            d.setdefault("gbps", d["bytes"] / d["median_s"] / 1e9)
        records.append(harness.Record(**d, extra=extra))
    return records


def _write_results(path, records, rs, limits, args, elapsed) -> None:
    import io

    table = io.StringIO()
    harness.print_table(records, file=table)
    load_end = _load()
    lines = [
        "# fasttrain bench results", "",
        f"Regenerate with: `.venv/bin/python -m bench {' '.join(args.argv)}` (from the repository root, nothing "
        "else running).", "",
        f"- machine: {_machine()}",
        f"- threads: {ft.settings.num_threads}",
        f"- measured limits: memory bandwidth {limits.bandwidth / 1e9:.1f} GB/s from main memory (best of the STREAM "
        f"probes: add, scale, in-place add, 3-array in-place update; {limits.bandwidth_source}; "
        f"{(limits.bandwidth_out_of_place or limits.bandwidth) / 1e9:.1f} GB/s the best out-of-place one), "
        f"sgemm {limits.flops / 1e9:.1f} GFLOP/s ({limits.flops_source}); FMA peak (register-only FMA loop, 12 "
        f"accumulators, every thread; `fma_peak_*` rows): "
        + (", ".join(f"{isa} {v / 1e9:.0f} GFLOP/s" for isa, v in limits.peaks.items()) or "not measured"),
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, wall time {elapsed:.0f} s",
        f"- load average (1 min) at the start and the end of the run: {args.load_start} and {load_end} "
        + _load_note(args.load_start, load_end), "",
        "Times are medians of several samples, interleaved between the implementations of a row; a sample is a "
        "burst of back-to-back calls lasting at least 20 ms and 3 calls (one call when it takes longer), "
        "summarized by the lower quartile of its calls, so the ~4 ms stalls this VM adds to some calls (a "
        "sleeping thread pool's wake-up, a neighbour) do not move sub-20 ms rows (bench.harness.time_interleaved); "
        "% of limit = the time the declared bytes (or FLOPs) would take at "
        "the measured limit, divided by the measured time. A kernel's bandwidth limit is measured by STREAM-style "
        "probes over the kernel's own working set (its arrays' bytes; `limit_gbps` in the JSON), so a kernel "
        "whose arrays sit in a cache level is held to that level. The probes are timed in the kernel's own "
        "interleaved rounds, as more implementations of the row, and each probe's rate is the median of its "
        "samples, the statistic the kernel's time is (`limit_timing` in the JSON): the drift of a shared "
        "machine's memory system (2x within minutes here) then moves limit and kernel alike, where a best-of-7 "
        "probe before and after the row put the probe's luckiest moment beside the kernel's typical one and "
        "swung a row between 40 and 75 % from run to run. "
        "A row whose kernels write fresh arrays (`writes_fresh` in bench/kernels.py: BN, ReLU, pooling, the "
        "blocked rows; `limit_probes` in the JSON) is held to the best out-of-place probe (c = a + b, b = s·a, "
        "which pay the read for ownership of each written line, as it does), a row whose kernels only read "
        "(`reads_only`: the depthwise weight gradient, which writes C x 10 floats) to the read-only probe "
        "(`stream_sum`, the sum of two arrays: the in-place probes' counted bytes are one third writes, which "
        "travel beside the reads), every other row to the best of "
        "all probes (the in-place add and 3-array update included), and `% in-place limit` "
        "(`pct_of_inplace_limit`) holds every row to that best of all; `pct_of_bandwidth` is the bandwidth share "
        "alone. A row's FLOPs are held to the sgemm rate for conv2d rows and to the FMA peak for every other row "
        "(`flop_roof`: our depthwise kernels in cache outrun the sgemm rate). conv2d declares the FLOPs of direct convolution "
        "(2·N·K·C·R·S·P·Q per pass); a Winograd or FFT algorithm does fewer multiplies, so its % of the sgemm "
        "limit is an effective figure and can pass 100 %.", "",
    ]
    lines += _train_tables(records, limits) + _kernel_table(records)
    lines += ["## All records", "", "```", table.getvalue().rstrip(), "```", "",
              "## Ratios (alternative time / ours, measured in the same run)", "",
              "`torch-best` is the fastest PyTorch variant of that workload (named in brackets).", "",
              "| kernel | shape | ours | vs | speedup |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['shape']} | {r['ours']} | {r['vs']}{' (' + r['variant'] + ')' if 'variant' in r else ''}"
              f" | {r['speedup']:.2f}x |" for r in rs]
    chosen = [(r.shape, r.extra["algorithm"]) for r in records
              if r.suite == "collectives" and r.backend == "ring" and r.extra.get("algorithm")]
    if chosen:  # "ring" is our all-reduce; which of its algorithms ran depends on the size
        lines += ["", "## Algorithm our all-reduce ran (`fasttrain.parallel.allreduce_algorithm`)", "",
                  "| shape | algorithm |", "|---|---|"] + [f"| {shape} | {algo} |" for shape, algo in chosen]
    Path(path).write_text("\n".join(lines) + "\n")


def _ms(rec):
    return f"{rec.median_s * 1e3:.2f}" if rec is not None else "-"


def _train_tables(records, limits) -> list[str]:
    train = [r for r in records if r.suite == "train"]
    if not train:
        return []
    from .train import TORCH_VARIANTS

    peak = f"{limits.peak / 1e9:.0f} GFLOP/s" if limits.peak else "not measured"
    out = ["## End to end: training images/s (forward + backward + Adam step), interleaved, medians", "",
           "torch = PyTorch's defaults (NCHW, foreach Adam); torch-cl = channels_last model and input + "
           "`Adam(fused=True)`; torch-compile = torch-cl under `torch.compile` (compiled before timing). "
           "Ratios are against the **fastest** PyTorch variant of the row. MFU = useful conv + linear FLOPs "
           f"(direct-convolution count, no input gradient for the first layer) per second / the AVX-512 FMA peak ({peak}); "
           "Winograd layers do fewer multiplies than that count, so a net running them can pass 100 %.",
           "", "| net | batch | fasttrain | " + " | ".join(TORCH_VARIANTS) + " | ours / fastest torch | ours / torch default "
           "| MFU ours | MFU fastest torch |", "|---|---|" + "---|" * (len(TORCH_VARIANTS) + 5)]
    notes = []
    for (suite, name, shape), by in harness._groups(train).items():
        ours = next((by[b] for b in harness.OURS if b in by), None) or by.get("numpy")
        if ours is None:
            continue
        best = harness.fastest_torch(by)
        cells = [f"{by[v].extra['images_per_s']:.0f}" if v in by else "n/a" for v in TORCH_VARIANTS]
        mfu = lambda r: f"{100 * r.extra['mfu']:.1f}%" if r is not None and "mfu" in r.extra else "-"  # noqa: E731
        batch = shape.strip("()").split(",")[0]
        out.append(f"| {name.removesuffix('_step')} | {batch} | {ours.extra['images_per_s']:.0f} | " + " | ".join(cells)
                   + f" | {ours.extra.get('vs_torch_best', float('nan')):.2f}x ({best.backend if best else '-'}) "
                   f"| {ours.extra.get('vs_torch_default', float('nan')):.2f}x | {mfu(ours)} | {mfu(best)} |")
        notes += [f"- {name} batch {batch}, {k.removesuffix('_note')}: {v}" for k, v in ours.extra.items()
                  if k.endswith("_note")]
        notes += [f"- {name} batch {batch}, {b}: {r.extra['note']}" for b, r in by.items() if "note" in r.extra]
    out += [""] + notes + ([""] if notes else [])
    mem = [r for r in records if r.suite == "memory"]
    if mem:
        out += ["## Peak resident memory of training steps (each implementation in a fresh process)", "",
                "ru_maxrss of a child process that builds the model, then runs the steps; `before` is the peak "
                "before the first step (interpreter, libraries, model, batch).", "",
                "| workload | implementation | peak MiB | before the steps MiB | added by the steps MiB |",
                "|---|---|---|---|---|"]
        out += [f"| {r.name} {r.shape} | {r.backend} | {r.extra['peak_rss_mib']:.0f} | {r.extra['rss_before_steps_mib']:.0f}"
                f" | {r.extra['steps_rss_mib']:.0f} |" for r in mem]
        out.append("")
    return out


def _kernel_table(records) -> list[str]:
    kernels = [r for r in records if r.suite == "kernels"]
    if not kernels:
        return []
    out = ["## Kernels against PyTorch (fastest variant; default kept as a column)", "",
           "torch = PyTorch's default call; torch-fused = `fused=True` optimizer; torch-cl = channels_last tensors "
           "and module. % limit: of the bandwidth probed at the kernel's working set (out-of-place probes for "
           "fresh-output rows), or of sgemm for conv; % in-pl.: of the best of all probes there; "
           "% peak: of the AVX-512 FMA peak (FLOP-bound rows).", "",
           "| kernel | shape | ours | ms | GB/s | GFLOP/s | % limit | % in-pl. | % peak | fastest torch ms | ours / fastest "
           "| torch default ms | ours / default |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (suite, name, shape), by in harness._groups(kernels).items():
        best = harness.fastest_torch(by)
        for b in harness.OURS:
            if b not in by:
                continue
            r = by[b]
            pct = f"{r.pct_of_limit:.0f}%" if r.pct_of_limit is not None else "-"
            ppk = f"{r.extra['pct_of_peak']:.0f}%" if "pct_of_peak" in r.extra else "-"
            pip = f"{r.extra['pct_of_inplace_limit']:.0f}%" if "pct_of_inplace_limit" in r.extra else "-"
            vs_best = f"{r.extra['vs_torch_best']:.2f}x" if "vs_torch_best" in r.extra else "-"
            vs_def = f"{r.extra['vs_torch_default']:.2f}x" if "vs_torch_default" in r.extra else "-"
            out.append(f"| {name} | {shape} | {b} | {_ms(r)} | {r.gbps or 0:.1f} | {r.gflops or 0:.1f} | {pct} | {pip} | {ppk} "
                       f"| {_ms(best)}{' (' + best.backend + ')' if best else ''} | {vs_best} | {_ms(by.get('torch'))} "
                       f"| {vs_def} |")
    return out + [""]
