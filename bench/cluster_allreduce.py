"""All-reduce across emulated hosts (fasttrain.parallel.cluster: namespaces, veth links shaped
with tc, TCP forced), our algorithms against MPICH's Allreduce. Needs root.

    python bench/cluster_allreduce.py [--layouts 2x2,3x1] [--rates 1gbit,10gbit]
                                      [--sizes 65536,...] [--rounds N] [--loss P] [--json out.jsonl]
                                      [--mpich-algorithms default,ring,reduce_scatter_allgather] [--floor]

For every layout (hosts x ranks per host) and link rate, one cluster is made and this script
re-runs itself on it under mpiexec. Checks first (ours == MPICH within float32 rounding, ranks
bit-identical), then times. A sample is the slowest rank's time for one call between barriers;
every round takes one sample of each implementation, in a fresh random order every round, so
MPICH and ours see the same machine within milliseconds of each other (this shared 2-core VM's
speed drifts by 2x within seconds) and none always runs right after the same other one. Reported per implementation: the median and the
20th percentile (a low quantile: what the call costs when the ranks are not kept waiting for a
core), and the load average (1 min) before and after each cluster's run.
Implementations: MPICH's Allreduce ('mpi': at its defaults, or with --mpich-algorithms each of the
MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM choices named, all in one job: switched at run time through MPI_T
(bench/mpich_algorithms.py), written before each sample's barrier, outside its timed window, each
algorithm one more entry of the interleaved rounds; the table then shows, per size, MPICH's fastest
algorithm over ours from the same rounds: the comparison is with MPICH at its best. Where MPI_T
cannot switch them (another MPI), one job per algorithm, said so on the output, and per size the
job whose MPICH came closest to ours; such jobs run minutes apart on a shared machine and our own
medians spread 2x between them, so they compare the moments more than the algorithms), ours
as ring_allreduce picks it ('auto'), and (in the first run) the other ways forced: hierarchical with every rank on its slice across hosts ('hier_slices')
or one leader per host ('hier_leader'), and below 256 KB over two hosts one synchronization in the host with the
whole host sum across ('onefence'; 'auto' measures it against the hierarchical one); one rank per host: one round to every peer ('oneshot'),
reduce-scatter + all-gather with every peer at once ('direct'), through rank 0 ('rooted'); and the flat
ring ('flat_ring'). On 3-4 hosts of one rank 'auto' is whichever candidate measured fastest
(fasttrain.parallel.ring.measured_choice: below 1 MB the last three, from 1 MB direct or the ring). Below
1 MB 'auto' is timed in its steady state: after MEASURED_AGAIN_AFTER calls of its size, i.e. after the
re-measurement a training job gets from its 64th call on (the first measurement runs on the job's first
calls, while connections open); the record keeps the first pick too ('first_pick').
--floor: first a ping-pong between two ranks on different hosts (one way: the 20th percentile of 15
round trips, halved, at 0 B and 0.25-4 MB) fits the link's t = alpha + S beta; the table then shows
each cell's wire floor, 2 (H - 1) / H of the buffer through every host's link at beta (the fewest bytes any exact
all-reduce over H hosts moves out of the busiest host), and MPICH's and our time as multiples of it.
The machine has 2 cores for all the ranks: absolute times include waiting for a core.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fasttrain.parallel import allreduce_algorithm, get_comm, launched_world_size, ring_allreduce  # noqa: E402

SIZES = [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20]
FLAT_RING = {"small_bytes": 0, "shared_bytes": 0, "mid_bytes": 0}
NAMES = ["auto", "hier_slices", "hier_leader", "onefence", "oneshot", "direct", "rooted", "flat_ring"]


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def rounds_for(nbytes: int, base: int) -> int:
    """More rounds for the short calls: they are cheap and the noisiest (session 13: 21 rounds of a 64 KB
    cell, a few ms in all, read 0.65-1.00 where one job of 601 rounds read 1.13 paired)."""
    if nbytes <= (256 << 10):
        return 10 * base
    if nbytes <= (1 << 20):
        return 3 * base
    return max(5, base * 2 // 3) if nbytes <= (4 << 20) else max(5, base // 3)


def quantile(xs, q: float) -> float:
    return float(np.quantile(np.asarray(xs), q))


def sample(comm, fns: dict, reset, rounds: int, seed: int = 0, setup: dict | None = None) -> dict:
    """Per implementation, the slowest rank's time of one call, one sample per round each, in a
    fresh random order every round, the same on every rank (seed); two warm-up rounds first. Not a
    rotation: rotating a fixed list keeps each implementation right after the same neighbour in
    nearly every round ('auto' after MPICH's Allreduce), and a call right after MPICH's Allreduce
    ran 5-20 % slower in median than after one of ours (bench/dev/auto_ab.py, 3 hosts x 1 rank,
    64 KB-1 MB, load 6). setup: per name, what to do before its barrier, outside the timed window
    (MPICH's algorithm written through MPI_T)."""
    out = {name: [] for name in fns}
    order = list(fns)
    rng = np.random.default_rng(seed)
    for i in range(rounds + 2):
        for name in [order[k] for k in rng.permutation(len(order))]:
            if setup and name in setup:
                setup[name]()
            reset()
            comm.barrier()
            t0 = time.perf_counter()
            fns[name]()
            dt = time.perf_counter() - t0
            slowest = max(comm.allgather(dt))
            if i >= 2:
                out[name].append(slowest)
    return out


PINGPONG_SIZES = [0, 256 << 10, 1 << 20, 4 << 20]


def pingpong(comm, reps: int = 15) -> dict | None:
    """One-way seconds per size between rank 0 and the first rank on another host (the 20th
    percentile of `reps` round trips, halved), fitted to t = alpha + S beta by least squares over the
    sizes from 256 KB (below them a message can pass the shaper whole, in one burst). None on one
    host."""
    import socket

    raw = comm.comm
    hosts = comm.allgather(socket.gethostname())
    peer = next((k for k, h in enumerate(hosts) if h != hosts[0]), None)
    if peer is None:
        return None
    one_way = {}
    for size in PINGPONG_SIZES:
        a, b = np.zeros(size // 4, np.float32), np.empty(size // 4, np.float32)
        ts = []
        for _ in range(reps + 1):
            comm.barrier()
            t0 = time.perf_counter()
            if comm.rank == 0:
                raw.Send(a, peer, 91)
                raw.Recv(b, peer, 91)
            elif comm.rank == peer:
                raw.Recv(b, 0, 91)
                raw.Send(a, 0, 91)
            ts.append(time.perf_counter() - t0)
        one_way[size] = quantile(ts[1:], 0.2) / 2
    big = [x for x in PINGPONG_SIZES if x >= 256 << 10]
    beta, alpha_fit = np.polyfit(big, [one_way[x] for x in big], 1)
    return {"alpha_s": one_way[0], "alpha_fit_s": float(alpha_fit), "beta_s_per_byte": float(beta),
            "one_way_s": {str(k): v for k, v in one_way.items()}}


def child(args):
    from fasttrain.parallel.ring import (MEASURED_AGAIN_AFTER, MEASURED_MAX_BYTES, direct_allreduce, hierarchical_allreduce,
                                         onefence_allreduce, onefence_fits, oneshot_allreduce, rooted_allreduce)
    from fasttrain.parallel.shm import hierarchy

    comm = get_comm()
    p, r = comm.size, comm.rank
    h = hierarchy(comm)
    load_before = load1()
    algs, runtime = None, [a for a in (args.mpich_runtime or "").split(",") if a]
    if runtime:  # MPICH's algorithms switched through MPI_T, all in this job (else: the environment's)
        from bench.mpich_algorithms import MpichAllreduce, MpiTUnavailable
        try:
            algs = MpichAllreduce()
        except MpiTUnavailable as e:
            why = str(e)
        else:
            why = None
            for a in runtime:
                algs.set(a)  # an unknown name fails here, with the list of known ones
            algs.set("auto")
        if r == 0:
            print(json.dumps({"suite": "cluster_allreduce", "layout": args.layout, "rate": args.rate, "backend": "mpit",
                              "available": algs is not None, "reason": why, "names": algs.names if algs else None}),
                  flush=True)
    env_algorithm = os.environ.get("MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM", "default")
    if args.floor:
        fit = pingpong(comm)
        if r == 0 and fit is not None:
            print(json.dumps({"suite": "cluster_allreduce", "layout": args.layout, "rate": args.rate, "ranks": p,
                              "backend": "pingpong", "load_before": load_before, **fit}), flush=True)
    for size in [int(s) for s in args.sizes.split(",")]:
        n = size // 4
        src = np.random.default_rng([r, n]).standard_normal(n).astype(np.float32)
        buf = src.copy()
        if algs is not None:  # one entry per MPICH algorithm, its cvar written before its barrier
            fns = {f"mpi:{a}": lambda: comm.allreduce_mpi(buf) for a in runtime}
        else:
            fns = {f"mpi:{env_algorithm}": lambda: comm.allreduce_mpi(buf)}
        fns["auto"] = lambda: ring_allreduce(comm, buf)
        if not args.alternatives:
            pass
        elif h is not None:
            if h.equal:
                fns["hier_slices"] = lambda: hierarchical_allreduce(comm, buf, mode="slices")
            fns["hier_leader"] = lambda: hierarchical_allreduce(comm, buf, mode="leader")
            if onefence_fits(comm, size):
                fns["onefence"] = lambda: onefence_allreduce(comm, buf)
        else:
            fns["oneshot"] = lambda: oneshot_allreduce(comm, buf)
            fns["direct"] = lambda: direct_allreduce(comm, buf)
            fns["rooted"] = lambda: rooted_allreduce(comm, buf)
        if args.alternatives:
            fns["flat_ring"] = lambda: ring_allreduce(comm, buf, **FLAT_RING)
        first_pick = allreduce_algorithm(comm, size)
        if size < MEASURED_MAX_BYTES and getattr(comm, "_ring_measured", {}).get(size.bit_length()):
            for _ in range(MEASURED_AGAIN_AFTER):  # the counted calls that trigger the re-measurement
                ring_allreduce(comm, buf)
        # before each call: MPICH's algorithm for its entries, MPICH's own choice for ours (any
        # MPI-internal all-reduce, e.g. in a communicator's creation, then runs as in a training job)
        setup = {} if algs is None else {
            name: (lambda a=name[4:]: algs.set(a)) if name.startswith("mpi:") else (lambda: algs.set("auto"))
            for name in fns}
        want = src.copy()
        comm.allreduce_mpi(want)
        for name, fn in fns.items():
            if name in setup:
                setup[name]()
            np.copyto(buf, src)
            fn()
            if not np.allclose(buf, want, rtol=1e-5, atol=1e-5 * p):
                raise AssertionError(f"size={size} {name}: differs from MPICH's Allreduce by {np.max(np.abs(buf - want))}")
            if len(set(comm.allgather(hashlib.sha256(buf.tobytes()).hexdigest()))) != 1:
                raise AssertionError(f"size={size} {name}: results differ between ranks")
        samples = sample(comm, fns, lambda: np.copyto(buf, src), rounds_for(size, args.rounds), seed=size, setup=setup)
        if algs is not None:
            algs.set("auto")
        if r == 0:
            for name, s in samples.items():
                mpich = name[4:] if name.startswith("mpi:") else None
                print(json.dumps({"suite": "cluster_allreduce", "layout": args.layout, "rate": args.rate, "ranks": p,
                                  "loss": args.loss, "size": size, "backend": "mpi" if mpich else name,
                                  "median_s": statistics.median(s),
                                  # the median over rounds of this sample / ours of the same round (ms apart):
                                  # the drift of the machine's speed over seconds cancels in each quotient
                                  "paired_vs_auto": float(np.median(np.asarray(s) / np.asarray(samples["auto"]))),
                                  "p20_s": quantile(s, 0.2), "min_s": min(s), "max_s": max(s), "rounds": len(s),
                                  "load_before": load_before, "load_after": load1(), "job": args.job,
                                  "mpich_algorithm": mpich, "mpich_set_by": None if not mpich else "mpi_t" if algs else "env",
                                  "algorithm": allreduce_algorithm(comm, size) if name == "auto" else name,
                                  "first_pick": first_pick if name == "auto" else None,
                                  # what measured_choice timed on its first call (ms per candidate), if it ran
                                  "measured_ms": getattr(comm, "_ring_measured_ms", {}).get(size.bit_length())
                                  if name == "auto" else None}),
                      flush=True)


def label(size: int) -> str:
    return f"{size >> 20} MB" if size >= 1 << 20 else f"{size >> 10} KB"


def table(records: list[dict]) -> str:
    """The results as a Markdown table: per layout, link and size, ours against MPICH (median and
    20th percentile) and their ratio (of the medians; 'paired': the median over rounds of MPICH's
    sample over ours of the same round, which the machine's drift over seconds does not move), with
    MPICH at its best: of the MPICH algorithms timed, the one whose median over ours was lowest,
    ours from the same job (in one job, with MPI_T: MPICH's fastest
    algorithm, interleaved with ours round by round; without it: one job per algorithm, each
    interleaved with ours); then the forced alternatives' medians (from the first job)."""
    from fasttrain.parallel.cluster import _rate_bits

    fits = {(x["layout"], x["rate"]): x for x in records if x["backend"] == "pingpong"}
    records = [x for x in records if x["backend"] not in ("pingpong", "mpit")]
    runs: dict = {}  # (layout, rate, size) -> job -> {"mpi": {algorithm: record}, backend: record}
    for x in records:
        job = runs.setdefault((x["layout"], x["rate"], x["size"]), {}).setdefault(x.get("job", x["mpich_algorithm"]), {"mpi": {}})
        if x["backend"] == "mpi":
            job["mpi"][x["mpich_algorithm"] or "default"] = x
        else:
            job[x["backend"]] = x
    names = [n for n in NAMES[1:] if any(n in job for cell in runs.values() for job in cell.values())]
    algorithms = {alg for cell in runs.values() for job in cell.values() for alg in job["mpi"]}
    several_algorithms, several_jobs = len(algorithms) > 1, any(len(cell) > 1 for cell in runs.values())
    if names:  # 'auto' of the job that timed the forced ways too: the same job, the same rounds
        names = ["auto"] + names
    lines = ["| hosts x ranks | link | size | load | MPICH ms (median / p20) | ours ms (median / p20) | MPICH / ours: "
             "median | paired | p20 | " + ("wire floor ms | MPICH / floor | ours / floor | " if fits else "")
             + ("MPICH algorithm (lowest ratio) | " if several_algorithms else "")
             + ("MPICH ms by algorithm (medians) | " if several_algorithms and not several_jobs else "")
             + ("ours ms over the jobs (medians, min-max) | " if several_jobs else "")
             + "ours picks | " + " | ".join("auto ms (job 1)" if n == "auto" else f"{n} ms" for n in names) + " |",
             "|" + "---|" * (10 + 3 * bool(fits) + several_algorithms + (several_algorithms and not several_jobs)
                             + several_jobs + len(names))]
    for (layout, rate, size), cell in sorted(runs.items(), key=lambda kv: (kv[0][0], -_rate_bits(kv[0][1]), kv[0][2])):
        ratio, worst, job = min((m["median_s"] / j["auto"]["median_s"], alg, j) for j in cell.values()
                                for alg, m in j["mpi"].items())
        m, a = job["mpi"][worst], job["auto"]
        first = cell[min(cell)]
        ours = [j["auto"]["median_s"] for j in cell.values()]
        cells = [f"{first[n]['median_s'] * 1e3:.2f}" if n in first else "-" for n in names]
        floor = ""
        if fits:
            hosts = int(layout.split("x")[0])
            fit = fits.get((layout, rate))
            f = 2 * (hosts - 1) / hosts * size * fit["beta_s_per_byte"] if fit else None
            floor = (f"{f * 1e3:.2f} | {m['median_s'] / f:.2f} | {a['median_s'] / f:.2f} | " if f
                     else "- | - | - | ")
        # MPICH's fastest algorithm (by median) over ours round by round, median of the quotients
        paired = f"{m['paired_vs_auto']:.2f}x" if "paired_vs_auto" in m else "-"
        by_alg = ", ".join(f"{alg} {x['median_s'] * 1e3:.2f}" for alg, x in job["mpi"].items())
        lines.append(f"| {layout} | {rate} | {label(size)} | {a['load_before']:.1f}-{a['load_after']:.1f} | "
                     f"{m['median_s'] * 1e3:.2f} / {m['p20_s'] * 1e3:.2f} | {a['median_s'] * 1e3:.2f} / {a['p20_s'] * 1e3:.2f} | "
                     f"**{ratio:.2f}x** | {paired} | {m['p20_s'] / a['p20_s']:.2f}x | " + floor
                     + (f"{worst} | " if several_algorithms else "")
                     + (f"{by_alg} | " if several_algorithms and not several_jobs else "")
                     + (f"{min(ours) * 1e3:.2f}-{max(ours) * 1e3:.2f} | " if several_jobs else "")
                     + f"{a['algorithm']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parent(args):
    from fasttrain.parallel.cluster import Cluster, unavailable

    why = unavailable()
    if why:
        sys.exit(f"cluster_allreduce: no emulated cluster here: {why}")
    records = []
    t0, load0 = time.perf_counter(), load1()
    algorithms = args.mpich_algorithms.split(",")
    for layout in args.layouts.split(","):
        hosts, per = (int(x) for x in layout.split("x"))
        for rate in args.rates.split(","):
            with Cluster(hosts, per, rate=rate, loss=args.loss) as c:
                # the first job times every MPICH algorithm, switched through MPI_T (it starts with the
                # first one in the environment); where MPI_T cannot switch them, one job per algorithm
                i, pending = 0, list(algorithms)
                while pending:
                    algorithm = pending.pop(0)
                    launcher = [] if algorithm == "default" else ["-genv", "MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM", algorithm]
                    proc = c.run([sys.executable, "-m", "mpi4py", str(Path(__file__).resolve()), "--child",
                                  "--layout", layout, "--rate", rate, "--sizes", args.sizes, "--rounds", str(args.rounds),
                                  "--loss", str(args.loss or 0), "--job", str(i)]
                                 + (["--alternatives"] if i == 0 else [])
                                 + (["--mpich-runtime", ",".join(algorithms)] if i == 0 and not args.mpich_per_job else [])
                                 + (["--floor"] if i == 0 and args.floor else []),
                                 timeout=1800, cwd=ROOT, launcher=launcher)
                    if proc.returncode != 0:
                        sys.exit(f"cluster_allreduce {layout} {rate} (MPICH {algorithm}): failed ({proc.returncode}):\n"
                                 f"{proc.stderr[-3000:]}")
                    new = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
                    records += new
                    mpit = next((x for x in new if x["backend"] == "mpit"), None)
                    if mpit is not None and mpit["available"]:
                        pending = []
                    elif mpit is not None and len(algorithms) > 1:
                        print(f"cluster_allreduce: MPICH's algorithms cannot be switched in one job ({mpit['reason']}): "
                              f"one job per algorithm instead ({', '.join(algorithms)}); each cell then compares "
                              f"jobs run minutes apart", flush=True)
                    i += 1
    print(f"cluster_allreduce: {time.perf_counter() - t0:.0f} s, load average (1 min) {load0:.1f} at the start, "
          f"{load1():.1f} at the end; {os.cpu_count()} cores; MPICH Allreduce algorithms: {args.mpich_algorithms}; "
          f"packet loss {args.loss or 0} per direction")
    for x in records:
        if x["backend"] == "pingpong":
            print(f"{x['layout']} {x['rate']}: ping-pong one way {x['alpha_s'] * 1e6:.1f} us at 0 B (alpha); "
                  f"beta {x['beta_s_per_byte'] * 1e9:.2f} ns/B ({8 / x['beta_s_per_byte'] / 1e9:.2f} Gbit/s), the slope "
                  f"from 256 KB to 4 MB")
    print(table(records))
    if args.json:
        Path(args.json).write_text("".join(json.dumps(x) + "\n" for x in records))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layouts", default="2x2,3x1", help="hosts x ranks per host, comma-separated")
    ap.add_argument("--rates", default="1gbit,10gbit", help="per-host link rates (tc htb), comma-separated")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="bytes, comma-separated")
    ap.add_argument("--rounds", type=int, default=21, help="base of the timed rounds per size: 10x it up to 256 KB, 3x up to 1 MB, 2/3 up to 4 MB, 1/3 above")
    ap.add_argument("--mpich-algorithms", default="default",
                    help="MPICH's Allreduce algorithms (MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM values; 'default': its own "
                         "choice), comma-separated: all in one job, switched through MPI_T and interleaved with ours "
                         "(where MPI_T cannot: one job each, the forced alternatives of ours in the first only)")
    ap.add_argument("--mpich-per-job", action="store_true",
                    help="one job per MPICH algorithm, set in the environment (as before MPI_T switching; for A/Bs)")
    ap.add_argument("--alternatives", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mpich-runtime", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--job", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--floor", action="store_true",
                    help="fit the link's alpha-beta by a ping-pong first; the table adds each cell's wire floor")
    ap.add_argument("--loss", type=float, default=None,
                    help="drop this fraction of the packets in each direction of every link (Cluster(loss=...))")
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
