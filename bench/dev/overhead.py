"""CPU time a rank spends per ring_allreduce call outside its waits (MPI waits and the shared window's
progress-counter polls): Python, copies, adds and the posting of messages, i.e. what the call costs a
core whatever the load (CPU time, not wall time). Plus a cProfile of the same calls (top functions by
own time, waits excluded). One job per layout and link on the emulated cluster. Needs root.

    python bench/dev/overhead.py [--layouts 2x2,3x1] [--rates 10gbit] [--sizes 65536] [--calls 400]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fasttrain.parallel import get_comm, launched_world_size, ring_allreduce  # noqa: E402


def child(args):
    from fasttrain.parallel import comm as C
    from fasttrain.parallel import ring as R
    from fasttrain.parallel import shm as S

    comm = get_comm()
    waited = [0.0]

    def timed(fn):
        def inner(*a, **k):
            t = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                waited[0] += time.process_time() - t
        return inner

    C.MPIComm.wait = timed(C.MPIComm.wait)
    C.MPIComm.waitall = timed(C.MPIComm.waitall)
    S._await = timed(S._await)
    for size in [int(s) for s in args.sizes.split(",")]:
        buf = np.ones(size // 4, np.float32)
        fns = {"auto": lambda: ring_allreduce(comm, buf), "mpi": lambda: comm.allreduce_mpi(buf),
               "hier": lambda: R.hierarchical_allreduce(comm, buf), "onefence": lambda: R.onefence_allreduce(comm, buf),
               "direct": lambda: R.direct_allreduce(comm, buf), "ring": lambda: R._measured_ring(comm, buf),
               "oneshot": lambda: R.oneshot_allreduce(comm, buf), "rooted": lambda: R.rooted_allreduce(comm, buf)}
        fn = fns[args.fn]
        for _ in range(80):
            ring_allreduce(comm, buf)
            fn()
        outside = []
        for _ in range(args.calls):
            comm.barrier()
            waited[0] = 0.0
            t = time.process_time()
            fn()
            outside.append(time.process_time() - t - waited[0])
        prof = cProfile.Profile()
        comm.barrier()
        prof.enable()
        for _ in range(200):
            fn()
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(14)
        res = comm.allgather((statistics.median(outside) * 1e6, float(np.quantile(outside, 0.2)) * 1e6))
        if comm.rank == 0:
            print(json.dumps({"layout": args.layout, "rate": args.rate, "size": size, "fn": args.fn,
                              "pick": R.allreduce_algorithm(comm, size),
                              "cpu_us_outside_waits_median_p20": [[round(a, 1), round(b, 1)] for a, b in res]}), flush=True)
            print(s.getvalue()[:4000], flush=True)


def parent(args):
    from fasttrain.parallel.cluster import Cluster

    for layout in args.layouts.split(","):
        hosts, per = (int(x) for x in layout.split("x"))
        for rate in args.rates.split(","):
            with Cluster(hosts, per, rate=rate) as c:
                proc = c.run([sys.executable, "-m", "mpi4py", str(Path(__file__).resolve()), "--child", "--layout", layout,
                              "--rate", rate, "--sizes", args.sizes, "--calls", str(args.calls), "--fn", args.fn], timeout=900, cwd=ROOT)
                print(proc.stdout)
                if proc.returncode != 0:
                    sys.exit(f"overhead {layout} {rate}: failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layouts", default="2x2,3x1")
    ap.add_argument("--rates", default="10gbit")
    ap.add_argument("--sizes", default=str(64 << 10))
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--fn", default="auto", help="auto, mpi, hier, onefence, direct, ring, oneshot, rooted")
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
