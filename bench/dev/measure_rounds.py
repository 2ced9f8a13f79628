"""How often does measured_choice's measurement from 1 MB (direct against the ring, `large_pick`)
pick the ring over 10 Gbit/s, where direct is 20-35 % faster? Repeated measurements in one job per
link (3 hosts x 1 rank), MEASURED_LARGE_ROUNDS alternating between the values given, beside a long
interleaved timing of the two. Needs root.

    python bench/dev/measure_rounds.py [--rates 10gbit,1gbit] [--sizes 1048576,4194304] [--rounds 5,9] [--repeats 15]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fasttrain.parallel import get_comm, launched_world_size  # noqa: E402


def child(args):
    from fasttrain.parallel import ring as R

    comm = get_comm()
    for size in [int(s) for s in args.sizes.split(",")]:
        picks = {int(k): Counter() for k in args.rounds.split(",")}
        misfires = []
        R.measured_choice(comm, size)  # connections, scratch
        for i in range(args.repeats):
            for k in picks:
                R.MEASURED_LARGE_ROUNDS = k
                pick = R._measure(comm, size, size.bit_length(), {})
                picks[k][pick] += 1
                if pick == "ring":  # the scores behind a ring pick: faster by the margin, or a tie at the wire?
                    misfires.append((k, comm._ring_measured_ms[size.bit_length()]))
        x = np.zeros(size // 4, np.float32)
        t = {"direct": [], "ring": []}
        for i in range(41):
            for name in (["direct", "ring"] if i % 2 else ["ring", "direct"]):
                comm.barrier()
                t0 = time.perf_counter()
                R._MEASURED_FNS[name](comm, x)
                dt = max(comm.allgather(time.perf_counter() - t0))
                if i:
                    t[name].append(dt)
        if comm.rank == 0:
            print(json.dumps({"rate": args.rate, "size": size, "load": float(Path("/proc/loadavg").read_text().split()[0]),
                              "picks": {k: dict(v) for k, v in picks.items()}, "ring_picks": misfires,
                              "direct_ms": [round(statistics.median(t["direct"]) * 1e3, 2), round(float(np.quantile(t["direct"], 0.2)) * 1e3, 2)],
                              "ring_ms": [round(statistics.median(t["ring"]) * 1e3, 2), round(float(np.quantile(t["ring"], 0.2)) * 1e3, 2)]}),
                  flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="10gbit,1gbit")
    ap.add_argument("--sizes", default="1048576,4194304")
    ap.add_argument("--rounds", default="5,9")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--rate", default="")
    args = ap.parse_args()
    if args.child or launched_world_size() > 1:
        return child(args)
    from fasttrain.parallel.cluster import Cluster
    for rate in args.rates.split(","):
        with Cluster(3, 1, rate=rate) as c:
            proc = c.run([sys.executable, "-m", "mpi4py", str(Path(__file__).resolve()), "--child", "--rate", rate,
                          "--sizes", args.sizes, "--rounds", args.rounds, "--repeats", str(args.repeats)], timeout=1200, cwd=ROOT)
            if proc.returncode:
                sys.exit(proc.stderr[-3000:])
            print(proc.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
