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
    ap.add_argument("suite", nargs="?", default="kernels", choices=["kernels", "collectives", "train", "gpu", "all"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds (used by the tests)")
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per measurement (median reported)")
    ap.add_argument("--json", default=None, help="write JSON lines here")
    ap.add_argument("--png", default=None, help="write the chart here")
    ap.add_argument("--results", default=None, help="write a Markdown report here (e.g. bench/RESULTS.md)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: the package setting)")
    args = ap.parse_args(argv)
    if args.threads:
        ft.set_num_threads(args.threads)

    t0 = time.time()
    print(f"machine: {_machine()}")
    print(f"build: {json.dumps(ft.build_info(), default=str)}")
    limits, records = harness.measure_limits(args.quick)
    print(f"limits: bandwidth {limits.bandwidth / 1e9:.1f} GB/s from main memory ({limits.bandwidth_source}), "
          f"sgemm {limits.flops / 1e9:.1f} GFLOP/s ({limits.flops_source})")
    suites = ["kernels", "collectives", "train", "gpu"] if args.suite == "all" else [args.suite]
    for suite in suites:
        print(f"[{suite}]")
        if suite == "kernels":
            from . import kernels

            records += kernels.run(limits, quick=args.quick, repeat=args.repeat)
        elif suite == "train":
            from . import train

            records += train.run(limits, quick=args.quick, repeat=args.repeat)
        elif suite == "collectives":
            records += _collectives(args.quick)
        elif suite == "gpu":
            from . import gpu

            gpu_records = gpu.run(quick=args.quick, repeat=args.repeat)
            records += gpu_records
            for line in gpu.summary(gpu_records):
                print(f"  {line}")
    print()
    harness.print_table(records)
    rs = harness.ratios(records)
    if rs:
        print("\nratios (alternative time / ours, same run):")
        for r in rs:
            print(f"  {r['name']:<20} {r['shape'][:26]:<26} {r['ours']:>5} vs {r['vs']:<6} {r['speedup']:7.2f}x")
    if args.json:
        harness.write_jsonl(args.json, records)
    if args.png:
        harness.plot(records, args.png)
    if args.results:
        _write_results(args.results, records, rs, limits, args, time.time() - t0)
    print(f"\ndone in {time.time() - t0:.1f} s")
    return 0


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
    lines = [
        "# fasttrain bench results", "",
        f"Regenerate with: `.venv/bin/python -m bench {args.suite} --results {path}"
        f"{' --quick' if args.quick else ''}` (from the repository root, nothing else running).", "",
        f"- machine: {_machine()}",
        f"- threads: {ft.settings.num_threads}",
        f"- measured limits: memory bandwidth {limits.bandwidth / 1e9:.1f} GB/s from main memory (best of the STREAM "
        f"probes: add, in-place add, 3-array in-place update; {limits.bandwidth_source}), "
        f"sgemm {limits.flops / 1e9:.1f} GFLOP/s ({limits.flops_source})",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, wall time {elapsed:.0f} s", "",
        "Times are medians of several runs; % of limit = the time the declared bytes (or FLOPs) would take at "
        "the measured limit, divided by the measured time. A kernel's bandwidth limit is the better of two "
        "measurements just before and after it, by the "
        "same probes over the kernel's own working set (its arrays' bytes; `limit_gbps` in the JSON): a kernel "
        "whose arrays sit in a cache level is held to that level, and the drift of a shared machine's memory "
        "system over the run (2x within minutes here) does not show up as a kernel above 100 %. conv2d declares the FLOPs of direct convolution "
        "(2·N·K·C·R·S·P·Q per pass); a Winograd or FFT algorithm does fewer multiplies, so its % of the sgemm "
        "limit is an effective figure and can pass 100 %.", "",
        "```", table.getvalue().rstrip(), "```", "", "## Ratios (alternative time / ours, measured in the same run)", "",
        "| kernel | shape | ours | vs | speedup |", "|---|---|---|---|---|",
    ]
    lines += [f"| {r['name']} | {r['shape']} | {r['ours']} | {r['vs']} | {r['speedup']:.2f}x |" for r in rs]
    chosen = [(r.shape, r.extra["algorithm"]) for r in records
              if r.suite == "collectives" and r.backend == "ring" and r.extra.get("algorithm")]
    if chosen:  # "ring" is our all-reduce; which of its algorithms ran depends on the size
        lines += ["", "## Algorithm our all-reduce ran (`fasttrain.parallel.allreduce_algorithm`)", "",
                  "| shape | algorithm |", "|---|---|"] + [f"| {shape} | {algo} |" for shape, algo in chosen]
    Path(path).write_text("\n".join(lines) + "\n")
