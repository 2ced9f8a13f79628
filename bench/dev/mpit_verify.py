"""Does writing MPICH's allreduce cvar through MPI_T (bench/mpich_algorithms.py) pick the same algorithm
as the environment at MPI_Init, across emulated hosts? Per algorithm: one job with it in the environment,
then one job that switches between all of them through MPI_T, round by round. Each prints, per
algorithm, the median time of an Allreduce of SIZE bytes (slowest rank, between barriers) and the digest
of its float32 result (the order of the additions). Needs root.

    python bench/dev/mpit_verify.py [--layout 2x2] [--rate 1gbit] [--size 16777216] [--rounds 7]
        [--algorithms ring,recursive_doubling,reduce_scatter_allgather]

Session 13 (2x2, 1 Gbit/s, 16 MB): see bench/RESULTS_CLUSTER.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def child(args):
    from mpi4py import MPI

    from bench.mpich_algorithms import MpichAllreduce

    world = MPI.COMM_WORLD
    names = args.algorithms.split(",")
    env = os.environ.get("MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM")
    algs = MpichAllreduce()
    todo = [env] if env else names
    src = np.random.default_rng([world.rank, 5]).standard_normal(args.size // 4).astype(np.float32)
    buf = src.copy()
    times = {a: [] for a in todo}
    digests = {}
    for _ in range(args.rounds):
        for a in todo:
            if not env:
                algs.set(a)
            np.copyto(buf, src)
            world.Barrier()
            t0 = time.perf_counter()
            world.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            times[a].append(max(world.allgather(time.perf_counter() - t0)))
            digests[a] = hashlib.sha256(buf.tobytes()).hexdigest()[:12]
    if world.rank == 0:
        for a in todo:
            print(json.dumps({"set_by": "env" if env else "mpi_t", "algorithm": a, "read": algs.get() if env else None,
                              "median_ms": statistics.median(times[a]) * 1e3, "min_ms": min(times[a]) * 1e3,
                              "digest": digests[a]}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", default="2x2")
    ap.add_argument("--rate", default="1gbit")
    ap.add_argument("--size", type=int, default=16 << 20)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--algorithms", default="ring,recursive_doubling,reduce_scatter_allgather")
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        return child(args)
    from fasttrain.parallel.cluster import Cluster

    hosts, per = (int(x) for x in args.layout.split("x"))
    me = [sys.executable, "-m", "mpi4py", str(Path(__file__).resolve()), "--child", "--size", str(args.size),
          "--rounds", str(args.rounds), "--algorithms", args.algorithms]
    print(f"mpit_verify: {args.layout} {args.rate} {args.size} B, load {os.getloadavg()[0]:.1f} (loaded)")
    with Cluster(hosts, per, rate=args.rate) as c:
        for launcher in [["-genv", "MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM", a] for a in args.algorithms.split(",")] + [[]]:
            proc = c.run(me, timeout=600, cwd=ROOT, launcher=launcher)
            if proc.returncode:
                sys.exit(proc.stderr[-3000:])
            for ln in proc.stdout.splitlines():
                if ln.startswith("{"):
                    x = json.loads(ln)
                    print(f"{x['set_by']:6} {x['algorithm']:26} read {x['read'] or '-':26} median {x['median_ms']:8.1f} ms "
                          f"min {x['min_ms']:8.1f} ms  digest {x['digest']}")


if __name__ == "__main__":
    main()
