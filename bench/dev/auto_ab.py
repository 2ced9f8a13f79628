"""Does ring_allreduce's measured pick ('auto') cost more than the algorithm it runs? One job per
layout and link, every implementation interleaved round by round in ONE job (bench/cluster_allreduce.py
takes 'auto' from the job with the lowest MPICH/ours ratio and the forced columns from its first
job, and its rotating order puts each implementation always right after the same neighbour:
'auto' after MPICH's Allreduce). Here the order of a round is a fresh permutation (the same seed on
every rank), each sample keeps which implementation ran just before it, and the per-call cost of
the dispatch (verify_layout + allreduce_algorithm with the call counted) is timed alone. Needs root.

    python bench/dev/auto_ab.py [--layouts 3x1] [--rates 10gbit,1gbit] [--sizes ...] [--rounds 61]
                                [--names mpi,auto,direct,rooted,ring] [--json out.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fasttrain.parallel import get_comm, launched_world_size, ring_allreduce  # noqa: E402

SIZES = [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20]


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def child(args):
    from fasttrain.parallel import ring as R

    comm = get_comm()
    r = comm.rank
    rng = np.random.default_rng(12345)  # the same permutations on every rank
    for size in [int(s) for s in args.sizes.split(",")]:
        n = size // 4
        src = np.random.default_rng([r, n]).standard_normal(n).astype(np.float32)
        buf = src.copy()
        small = size < R.MEASURED_MAX_BYTES
        fns = {"mpi": lambda: comm.allreduce_mpi(buf), "auto": lambda: ring_allreduce(comm, buf),
               "direct": lambda: R.direct_allreduce(comm, buf), "rooted": lambda: R.rooted_allreduce(comm, buf),
               "oneshot": lambda: R.oneshot_allreduce(comm, buf), "ring": lambda: R.plain_ring_allreduce(comm, buf),
               "ring60": lambda: R.plain_ring_allreduce(comm, buf, segment_bytes=R.EAGER_BYTES),
               "ring_pieces": lambda: R.plain_ring_allreduce(comm, buf, segment_bytes=R.piece_bytes_for(size))}
        names = [x for x in args.names.split(",") if small or x not in ("rooted", "oneshot")]
        fns = {x: fns[x] for x in names}
        first_pick = R.allreduce_algorithm(comm, size)
        # the steady state a training job runs in: past the re-measurement at call MEASURED_AGAIN_AFTER
        # (below 1 MB, as bench/cluster_allreduce.py does)
        for _ in range(R.MEASURED_AGAIN_AFTER if small else 1):
            ring_allreduce(comm, buf)
        pick = R.allreduce_algorithm(comm, size)
        # the dispatch alone: what ring_allreduce does before it calls the algorithm
        layout = (buf.size, buf.dtype.str, "sum", None, None, R.DEFAULT_SEGMENT_BYTES, R.DEFAULT_SMALL_BYTES,
                  R.DEFAULT_SHARED_BYTES, R.DEFAULT_MID_BYTES)
        key = size.bit_length()
        calls = comm._ring_measured_calls
        saved = calls.get(key, 0)
        t0 = time.perf_counter()
        for _ in range(2000):
            R.verify_layout(comm, layout)
            R.allreduce_algorithm(comm, size)
        dispatch_us = (time.perf_counter() - t0) / 2000 * 1e6
        calls[key] = saved
        bounds = max(5, args.rounds if size <= (1 << 20) else args.rounds // 3 if size <= (4 << 20) else args.rounds // 6)
        rows = []
        prev = None
        for i in range(bounds + 2):
            # 'rotate': bench/cluster_allreduce.py's order (each name always after the same neighbour)
            order = names[i % len(names):] + names[:i % len(names)] if args.order == "rotate" else list(rng.permutation(names))
            for name in order:
                np.copyto(buf, src)
                comm.barrier()
                t0 = time.perf_counter()
                fns[name]()
                dt = time.perf_counter() - t0
                slowest = max(comm.allgather(dt))
                if i >= 2:
                    rows.append((name, prev, slowest))
                prev = name
        after = R.allreduce_algorithm(comm, size)
        if r == 0:
            out = {"layout": args.layout, "rate": args.rate, "size": size, "first_pick": first_pick, "pick": pick,
                   "pick_after": after, "measured_ms": getattr(comm, "_ring_measured_ms", {}).get(key),
                   "dispatch_us": round(dispatch_us, 2), "order": args.order, "load": load1(), "rounds": bounds,
                   "samples": rows}
            print(json.dumps(out), flush=True)


def summary(rec: dict) -> str:
    by = {}
    for name, _, t in rec["samples"]:
        by.setdefault(name, []).append(t)
    cells = []
    for name, ts in by.items():
        cells.append(f"{name} {statistics.median(ts) * 1e3:.2f} / {np.quantile(ts, 0.2) * 1e3:.2f}")
    # the predecessor effect on 'auto' and on its pick
    prev = {}
    for name, before, t in rec["samples"]:
        if name in ("auto", rec["pick"]) and before is not None:
            prev.setdefault((name, before), []).append(t)
    after = "; ".join(f"{a} after {b}: {np.quantile(ts, 0.2) * 1e3:.2f} (n={len(ts)})"
                      for (a, b), ts in sorted(prev.items()))
    return (f"{rec['layout']} {rec['rate']} {rec['size'] >> 10} KB (load {rec['load']:.1f}, {rec['rounds']} rounds; "
            f"pick {rec['first_pick']} -> {rec['pick']} -> {rec['pick_after']}; dispatch {rec['dispatch_us']} us; "
            f"measured {rec['measured_ms']}): median / p20 ms: " + ", ".join(cells) + "\n    p20 by predecessor: " + after)


def parent(args):
    from fasttrain.parallel.cluster import Cluster

    records = []
    for layout in args.layouts.split(","):
        hosts, per = (int(x) for x in layout.split("x"))
        for rate in args.rates.split(","):
            with Cluster(hosts, per, rate=rate) as c:
                load0 = load1()
                proc = c.run([sys.executable, "-m", "mpi4py", str(Path(__file__).resolve()), "--child", "--layout", layout,
                              "--rate", rate, "--sizes", args.sizes, "--rounds", str(args.rounds), "--names", args.names,
                              "--order", args.order],
                             timeout=1800, cwd=ROOT,
                             launcher=[] if args.mpich == "default" else ["-genv", "MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM", args.mpich])
                if proc.returncode != 0:
                    sys.exit(f"auto_ab {layout} {rate}: failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
                for ln in proc.stdout.splitlines():
                    if ln.startswith("{"):
                        rec = json.loads(ln)
                        rec["load_before"] = load0
                        records.append(rec)
                        print(summary(rec), flush=True)
    if args.json:
        Path(args.json).write_text("".join(json.dumps(x) + "\n" for x in records))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layouts", default="3x1")
    ap.add_argument("--rates", default="10gbit,1gbit")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--rounds", type=int, default=61)
    ap.add_argument("--names", default="mpi,auto,direct,rooted,ring")
    ap.add_argument("--order", default="random", choices=["random", "rotate"])
    ap.add_argument("--mpich", default="default", help="MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM for 'mpi'")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--layout", default="")
    ap.add_argument("--rate", default="")
    args = ap.parse_args()
    if args.child or launched_world_size() > 1:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
