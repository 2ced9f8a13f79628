"""All-reduce across emulated hosts (fasttrain.parallel.cluster: namespaces, veth links shaped
with tc, TCP forced), our algorithms against MPICH's Allreduce. Needs root.

    python bench/cluster_allreduce.py [--layouts 2x2,3x1] [--rates 1gbit,10gbit]
                                      [--sizes 65536,...] [--json out.jsonl]

For every layout (hosts x ranks per host) and link rate, one cluster is made and this script
re-runs itself on it under mpiexec. Checks first (ours == MPICH within float32 rounding, ranks
bit-identical), then times, interleaved in rounds (bench/collectives.py's sampling: the slowest
rank's time per call, median over rounds): MPICH's Allreduce, ours as ring_allreduce picks it
('auto'), and each way forced: hierarchical with every rank on its slice across hosts
('hier_slices') or one leader per host ('hier_leader'), flat halving-doubling and flat ring.
The machine has 2 cores for all the ranks: absolute times include waiting for a core.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.collectives import _samples  # noqa: E402
from fasttrain.parallel import allreduce_algorithm, get_comm, launched_world_size, ring_allreduce  # noqa: E402

SIZES = [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20]
FLAT_HD = {"small_bytes": 0, "shared_bytes": 0, "mid_bytes": 1 << 62}
FLAT_RING = {"small_bytes": 0, "shared_bytes": 0, "mid_bytes": 0}


def child(args):
    from fasttrain.parallel.ring import hierarchical_allreduce
    from fasttrain.parallel.shm import hierarchy

    comm = get_comm()
    p, r = comm.size, comm.rank
    h = hierarchy(comm)
    for size in [int(s) for s in args.sizes.split(",")]:
        n = size // 4
        src = np.random.default_rng([r, n]).standard_normal(n).astype(np.float32)
        buf = src.copy()
        fns = {"mpi": lambda: comm.allreduce_mpi(buf), "auto": lambda: ring_allreduce(comm, buf),
               "flat_hd": lambda: ring_allreduce(comm, buf, **FLAT_HD),
               "flat_ring": lambda: ring_allreduce(comm, buf, **FLAT_RING)}
        if h is not None:
            if h.equal:
                fns["hier_slices"] = lambda: hierarchical_allreduce(comm, buf, mode="slices")
            fns["hier_leader"] = lambda: hierarchical_allreduce(comm, buf, mode="leader")
        want = src.copy()
        comm.allreduce_mpi(want)
        for name, fn in fns.items():
            np.copyto(buf, src)
            fn()
            if not np.allclose(buf, want, rtol=1e-5, atol=1e-5 * p):
                raise AssertionError(f"size={size} {name}: differs from MPICH's Allreduce by {np.max(np.abs(buf - want))}")
            if len(set(comm.allgather(hashlib.sha256(buf.tobytes()).hexdigest()))) != 1:
                raise AssertionError(f"size={size} {name}: results differ between ranks")
        samples = _samples(comm, fns, lambda: np.copyto(buf, src), size)
        if r == 0:
            for name, s in samples.items():
                print(json.dumps({"suite": "cluster_allreduce", "layout": args.layout, "rate": args.rate, "ranks": p,
                                  "size": size, "backend": name, "median_s": statistics.median(s), "min_s": min(s),
                                  "max_s": max(s), "algorithm": allreduce_algorithm(comm, size) if name == "auto" else name}),
                      flush=True)


def parent(args):
    from fasttrain.parallel.cluster import Cluster, unavailable

    why = unavailable()
    if why:
        sys.exit(f"cluster_allreduce: no emulated cluster here: {why}")
    records = []
    for layout in args.layouts.split(","):
        hosts, per = (int(x) for x in layout.split("x"))
        for rate in args.rates.split(","):
            with Cluster(hosts, per, rate=rate) as c:
                proc = c.run([sys.executable, "-m", "mpi4py", str(Path(__file__).resolve()), "--child",
                              "--layout", layout, "--rate", rate, "--sizes", args.sizes], timeout=1800, cwd=ROOT)
                if proc.returncode != 0:
                    sys.exit(f"cluster_allreduce {layout} {rate}: failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
                records += [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    by = {(x["layout"], x["rate"], x["size"], x["backend"]): x for x in records}
    names = ["auto", "hier_slices", "hier_leader", "flat_hd", "flat_ring"]
    print(f"{'layout':>6} {'link':>7} {'size':>6} {'MPICH ms':>9} " + " ".join(f"{n:>11}" for n in names)
          + "  (ms; MPICH/auto: x) auto picks")
    for (layout, rate, size, backend), x in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        if backend != "mpi":
            continue
        mpi = x["median_s"]
        cells = []
        for n in names:
            y = by.get((layout, rate, size, n))
            cells.append(f"{y['median_s'] * 1e3:11.3f}" if y else f"{'-':>11}")
        auto = by[(layout, rate, size, "auto")]
        label = f"{size >> 20}M" if size >= 1 << 20 else f"{size >> 10}K"
        print(f"{layout:>6} {rate:>7} {label:>6} {mpi * 1e3:9.3f} " + " ".join(cells)
              + f"  {mpi / auto['median_s']:.2f}x {auto['algorithm']}")
    if args.json:
        Path(args.json).write_text("".join(json.dumps(x) + "\n" for x in records))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layouts", default="2x2,3x1", help="hosts x ranks per host, comma-separated")
    ap.add_argument("--rates", default="1gbit,10gbit", help="per-host link rates (tc htb), comma-separated")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="bytes, comma-separated")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--layout", default="", help=argparse.SUPPRESS)
    ap.add_argument("--rate", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child or launched_world_size() > 1:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
