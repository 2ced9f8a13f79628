"""Time-to-accuracy of data-parallel training: `mpiexec -n K fasttrain train` per strategy, same
epochs and seed, against a single-process run measured in the same invocation.

    python bench/time_to_accuracy.py [--ranks 2] [--dataset digits] [--epochs 15] [--target-acc 0.9]
                                     [--cluster-rate 100mbit] [--json out.jsonl]

Strategies: sync (ring), sync (MPI Allreduce), int8, sign + error feedback, local SGD H=4 and
H=16. Reported: final validation accuracy (rank 0's model), its gap to sync, wall time of the
whole run (start-up and data loading included), bytes each rank sent (the ring's count:
2(K-1)/K of the arena per all-reduce, less with a codec). Targets (issue 8): int8 within 0.5
points of sync, sign+EF and local SGD within 1 point. With --target-acc: the training time (the
epochs' own times, start-up left out) and epochs until validation accuracy first reached it.
Prints a table and JSON lines (suite="time_to_accuracy").
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = Path(sys.executable).parent / "mpiexec"

STRATEGIES = [
    ("single process", None, []),
    ("sync ring", "ring", []),
    ("sync MPI", "mpi", []),
    ("int8", "ring", ["--compress", "int8"]),
    ("sign+EF", "ring", ["--compress", "sign", "--error-feedback"]),
    ("local SGD H=4", "ring", ["--local-sgd", "4"]),
    ("local SGD H=16", "ring", ["--local-sgd", "16"]),
]
TARGET = {"int8": 0.5, "sign+EF": 1.0, "local SGD H=4": 1.0, "local SGD H=16": 1.0}


def run(name, dist, extra, ranks, common, timeout, cluster=None, target_acc=None):
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "fasttrain", "train", *common, "--run-dir", d]
        if dist is not None:
            launch = cluster.mpiexec_args(ranks) if cluster is not None else [str(MPIEXEC), "-n", str(ranks)]
            cmd = [*launch, *cmd, "--dist", dist, *extra]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"{name}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
        s = json.loads(Path(d, "summary.json").read_text())
        curve = [json.loads(ln) for ln in Path(d, "metrics.jsonl").read_text().splitlines() if '"val_acc"' in ln]
    # time to the target: training time (epoch_time_s summed, start-up and data loading left out)
    # up to the first epoch whose validation accuracy reaches it
    elapsed, reached = 0.0, None
    for e in curve:
        elapsed += e["epoch_time_s"]
        if target_acc is not None and e["val_acc"] >= target_acc:
            reached = {"epochs_to_target": e["epoch"], "time_to_target_s": elapsed}
            break
    return {"curve": [round(e["val_acc"], 4) for e in curve], **(reached or {"epochs_to_target": None, "time_to_target_s": None}),
            "val_acc": s["val_acc"], "val_loss": s["val_loss"], "wall_s": s["wall_time_s"], "steps": s["steps"],
            "bytes_sent_per_rank": s.get("bytes_sent_per_rank", 0), "ranks": s.get("ranks", 1),
            "allreduces": s.get("allreduces", 0), "params": s["params"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--model", default=None, help="default: the CLI's default model")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma-separated strategy names")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--target-acc", type=float, default=None,
                    help="also report the training time and epochs until validation accuracy first reaches this (0-1)")
    ap.add_argument("--json", help="also write the JSON lines here")
    ap.add_argument("--cluster-rate", default=None,
                    help="run the ranks on emulated hosts (one each) whose links carry this rate, e.g. 100mbit (root)")
    args = ap.parse_args(argv)
    common = ["--dataset", args.dataset, "--epochs", str(args.epochs), "--quiet", "--monitor-every", "0", "--no-plot"]
    if args.model:
        common += ["--model", args.model]
    if args.limit:
        common += ["--limit", str(args.limit)]
    todo = STRATEGIES if not args.only else [s for s in STRATEGIES if s[0] in args.only.split(",")]
    rows = []
    cluster = None
    if args.cluster_rate:
        from fasttrain.parallel.cluster import Cluster

        cluster = Cluster(args.ranks, 1, rate=args.cluster_rate).start()
    try:
        for name, dist, extra in todo:
            r = run(name, dist, extra, args.ranks, common, args.timeout, cluster, args.target_acc)
            r.update(suite="time_to_accuracy", name=name, dataset=args.dataset, epochs=args.epochs,
                     link=args.cluster_rate)
            rows.append(r)
    finally:
        if cluster is not None:
            cluster.stop()
    sync = next((r["val_acc"] for r in rows if r["name"] == "sync ring"), None)
    lines = []
    where = f", one emulated host per rank, {args.cluster_rate} links" if args.cluster_rate else ""
    print(f"\ntime to accuracy: {args.dataset}, {args.epochs} epochs, K={args.ranks} (single process: K=1){where}")
    to = f"to {100 * args.target_acc:g}%" if args.target_acc is not None else ""
    print(f"{'strategy':16s} {'val acc':>8s} {'vs sync':>8s} {'target':>7s} {'wall s':>7s} {'MB sent/rank':>13s} {'collectives':>11s}"
          + (f" {to + ': epochs':>14s} {'train s':>8s}" if to else ""))
    for r in rows:
        gap = None if sync is None else 100 * (r["val_acc"] - sync)
        r["gap_points_vs_sync"] = gap
        tgt = TARGET.get(r["name"])
        r["target_points"] = tgt
        r["meets_target"] = None if tgt is None or gap is None else abs(gap) <= tgt or gap > 0
        mark = "" if tgt is None else ("ok" if r["meets_target"] else "MISS")
        print(f"{r['name']:16s} {100 * r['val_acc']:8.2f} {'' if gap is None else f'{gap:+.2f}':>8s} "
              f"{'' if tgt is None else f'{tgt:.1f} {mark}':>7s} {r['wall_s']:7.1f} "
              f"{r['bytes_sent_per_rank'] / 1e6:13.2f} {r['allreduces']:11d}"
              + ("" if not to else f" {r['epochs_to_target'] or '-':>14} "
                 f"{'-' if r['time_to_target_s'] is None else format(r['time_to_target_s'], '.1f'):>8s}"))
        lines.append(json.dumps(r))
    print()
    for line in lines:
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
