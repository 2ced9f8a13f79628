"""Pipeline (model) parallelism: the bubble, activation memory, and pipeline vs data parallelism.

    python bench/pipeline.py [--quick] [--repeat 7] [--width 512] [--depth 8] [--batch 256]
    python bench/pipeline.py --cluster [--rates none,1gbit,100mbit]   # part 3 across emulated hosts

1. bubble: an MLP of `depth` Linear(width, width)+ReLU blocks under `mpiexec -n S`, S = 1, 2;
   for M = 1, 2, 4, 8 micro-batches (1F1B and GPipe): the step time and the share of it the
   stages spent waiting for each other (Pipeline.wait_s / step, mean over stages), beside the
   ideal bubble (S - 1) / (M + S - 1) of equal stages with free communication.
2. memory: the activations each stage holds at its peak (cached inputs of its layers, received
   and unfinished sent tensors: Pipeline.peak_activation_bytes), GPipe vs 1F1B, S = 4, M = 8,
   with threads standing in for ranks (a count, no timing).
3. pipeline vs data parallelism on the same 2 ranks and global batch: examples/s of a 2-stage
   pipeline (M = 8, 1F1B) and of 2 data-parallel ranks (half the batch each, then the ring
   all-reduce of the whole gradient), on the local link and through bench/netem.py's in-process
   throttle (every rank's outgoing link at G Gbit/s). Data parallelism sends ~the gradient
   (4 bytes per parameter) per step, the pipeline 2 x batch x boundary width x 4 bytes.
   --cluster: part 3 alone, the 2 ranks on 2 emulated hosts (fasttrain.parallel.cluster: network
   namespaces joined by a bridge, TCP forced, each host's link shaped by `tc htb` in both
   directions at each rate): the real network stack and MPI's own transport instead of the
   in-process throttle. Needs root; says why and stops elsewhere.
Medians of `repeat` steps after warm-up, slowest rank. Each rank runs one thread; on a 2-core
machine S > 2 would oversubscribe the cores, so timings stop at S = 2. Prints tables and JSON
lines (suite="pipeline"). Re-launches itself under mpiexec for parts 1 and 3.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fasttrain as ft  # noqa: E402
from bench.harness import mpiexec_records  # noqa: E402
from fasttrain.parallel import ThreadWorld, get_comm, ring_allreduce  # noqa: E402
from fasttrain.parallel.pipeline import Pipeline  # noqa: E402

MICRO = (1, 2, 4, 8)


def build(width: int, depth: int, classes: int = 10):
    layers = []
    for _ in range(depth):
        layers += [ft.nn.Linear(width, width), ft.nn.ReLU()]
    return ft.nn.Sequential(*layers, ft.nn.Linear(width, classes))


def batch(args, step: int):
    rng = np.random.default_rng(step)
    return rng.standard_normal((args.batch, args.width)).astype(np.float32), rng.integers(0, 10, args.batch)


def _timed(comm, step_fn, repeat: int) -> float:
    """Median over `repeat` steps (after one warm-up) of the slowest rank's step time."""
    times = []
    for i in range(repeat + 1):
        comm.barrier()
        t0 = time.perf_counter()
        step_fn(i)
        dt = max(comm.allgather(time.perf_counter() - t0))
        if i:
            times.append(dt)
    return statistics.median(times)


def child_bubble(args):
    comm = get_comm()
    loss = ft.losses.SoftmaxCrossEntropy()
    for schedule in ("1f1b", "gpipe"):
        for m in MICRO:
            pipe = Pipeline(build(args.width, args.depth), comm, m, schedule, input_shape=(args.width,))
            opt = ft.optim.SGD(pipe.arena, lr=1e-3)
            waits = []

            def step(i):
                x, y = batch(args, i)
                pipe.arena.zero_grad()
                pipe.train_step(x, y, loss, step=i)
                opt.step()
                waits.append(pipe.wait_s)

            step_s = _timed(comm, step, args.repeat)
            wait = statistics.mean(comm.allgather(statistics.median(waits[1:])))
            if comm.rank == 0:
                S = comm.size
                print(json.dumps({"suite": "pipeline", "name": "bubble", "stages": S, "micro_batches": m,
                                  "schedule": schedule, "step_s": step_s, "wait_share": wait / step_s,
                                  "ideal_bubble": (S - 1) / (m + S - 1), "batch": args.batch, "width": args.width,
                                  "depth": args.depth}), flush=True)


def child_versus(args):
    from bench.netem import ThrottledComm

    base = get_comm()
    loss = ft.losses.SoftmaxCrossEntropy()
    for gbits in [None] + [float(g) for g in args.gbits.split(",") if g]:
        comm = base if gbits is None else ThrottledComm(base, gbits * 1e9 / 8)
        if gbits is not None:  # the pipeline's per-step loss broadcast (a few bytes) skips the throttle
            comm.bcast = base.bcast
        # data parallelism: half the batch here, then the whole gradient's ring all-reduce
        model = build(args.width, args.depth)
        arena = ft.ParamArena.for_model(model, seed=0)
        opt = ft.optim.SGD(arena, lr=1e-3)
        half = slice(base.rank * args.batch // 2, (base.rank + 1) * args.batch // 2)

        def dp_step(i):
            x, y = batch(args, i)
            arena.zero_grad()
            _, d = loss(model.forward(x[half]), y[half])
            model.backward(d)
            ring_allreduce(comm, arena.grad, op="mean")
            opt.step()

        dp_s = _timed(base, dp_step, args.repeat)
        pipe = Pipeline(build(args.width, args.depth), comm, 8, "1f1b", input_shape=(args.width,))
        popt = ft.optim.SGD(pipe.arena, lr=1e-3)

        def pipe_step(i):
            x, y = batch(args, i)
            pipe.arena.zero_grad()
            pipe.train_step(x, y, loss, step=i)
            popt.step()

        pipe_s = _timed(base, pipe_step, args.repeat)
        if base.rank == 0:
            for how, s in (("data_parallel", dp_s), ("pipeline_m8", pipe_s)):
                print(json.dumps({"suite": "pipeline", "name": "versus", "how": how, "ranks": base.size,
                                  "gbits": gbits, "step_s": s, "examples_per_s": args.batch / s,
                                  "params": arena.size, "batch": args.batch}), flush=True)


def memory(args) -> list[dict]:
    S, M = 4, 8
    out = []
    Pipeline(build(args.width, args.depth), ft.parallel.LocalComm(), 1, input_shape=(args.width,)).train_step(
        *batch(args, 0), ft.losses.SoftmaxCrossEntropy())   # the kernels' first use, before any thread
    for schedule in ("gpipe", "1f1b"):
        def rank(comm):
            pipe = Pipeline(build(args.width, args.depth), comm, M, schedule, input_shape=(args.width,))
            x, y = batch(args, 0)
            pipe.train_step(x, y, ft.losses.SoftmaxCrossEntropy())
            return pipe.peak_activation_bytes, pipe.peak_in_flight

        for s, (peak, flight) in enumerate(ThreadWorld(S).run(rank)):
            out.append({"suite": "pipeline", "name": "memory", "schedule": schedule, "stages": S, "micro_batches": M,
                        "stage": s, "peak_activation_bytes": peak, "peak_micro_batches": flight})
    return out


def cluster_versus(args, forward: list[str]) -> list[dict]:
    """Part 3 on 2 emulated hosts x 1 rank, once per link rate; records carry the rate."""
    import os

    from fasttrain.parallel import cluster as cl

    why = cl.unavailable() or (None if cl.mpiexec_path().exists() else f"no mpiexec beside {sys.executable}")
    if why:
        sys.exit(f"pipeline.py --cluster: no emulated cluster here: {why}")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = []
    for rate in args.rates.split(","):
        with cl.Cluster(2, 1, rate=None if rate == "none" else rate) as c:
            before = [c.link_bytes(h) for h in range(c.hosts)]
            proc = c.run([sys.executable, "-m", "mpi4py", __file__, "--child=versus", *forward, "--gbits="],
                         timeout=1800, env=env, cwd=ROOT)
            moved = sum(c.link_bytes(h) - b for h, b in zip(range(c.hosts), before))
        if proc.returncode != 0:
            sys.exit(f"pipeline.py --cluster: the run at {rate} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                out.append({**json.loads(line), "link": f"cluster {rate}", "link_bytes": moved})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", choices=["bubble", "versus"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="small model, few repeats (a smoke test)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--gbits", default="1,0.1", help="throttled link rates for part 3 (Gbit/s)")
    ap.add_argument("--cluster", action="store_true", help="part 3 only, on 2 emulated hosts (needs root)")
    ap.add_argument("--rates", default="none,1gbit,100mbit",
                    help="--cluster: the hosts' link rates (tc htb; none: the veth unshaped)")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeat, args.width, args.depth, args.batch = 2, 64, 4, 32
    ft.set_num_threads(1)
    if args.child == "bubble":
        child_bubble(args)
        return 0
    if args.child == "versus":
        child_versus(args)
        return 0
    forward = [f"--repeat={args.repeat}", f"--width={args.width}", f"--depth={args.depth}", f"--batch={args.batch}",
               f"--gbits={args.gbits}"]
    if args.cluster:
        records = cluster_versus(args, forward)
        params = records[0]["params"] if records else 0
        print(f"3. pipeline (S = 2, M = 8, 1F1B) vs data parallelism, 2 emulated hosts x 1 rank (TCP over veth, "
              f"tc htb), global batch {args.batch}, {params} parameters")
        print(f"{'link':>10} {'data parallel ex/s':>19} {'pipeline ex/s':>14} {'pipeline / dp':>14}")
        for rate in args.rates.split(","):
            row = {r["how"]: r for r in records if r["link"] == f"cluster {rate}"}
            dp, pp = row["data_parallel"]["examples_per_s"], row["pipeline_m8"]["examples_per_s"]
            print(f"{rate:>10} {dp:19.0f} {pp:14.0f} {pp / dp:13.2f}x")
        for r in records:
            print(json.dumps(r))
        return 0
    records = []
    for S in (1, 2):
        records += mpiexec_records(S, __file__, ["--child=bubble", *forward])
    print(f"1. step time and bubble: MLP {args.depth} x Linear({args.width}), batch {args.batch}, 1 thread per rank")
    print(f"{'S':>2} {'M':>2} {'schedule':>8} {'step ms':>8} {'waited':>7} {'ideal bubble':>12}")
    for r in records:
        print(f"{r['stages']:>2} {r['micro_batches']:>2} {r['schedule']:>8} {r['step_s'] * 1e3:8.1f} "
              f"{r['wait_share']:7.0%} {r['ideal_bubble']:12.0%}")
    mem = memory(args)
    records += mem
    print("\n2. activations held per stage at its peak (S = 4, M = 8), MB")
    for schedule in ("gpipe", "1f1b"):
        rows = [r for r in mem if r["schedule"] == schedule]
        print(f"{schedule:>6}: " + "  ".join(f"stage {r['stage']}: {r['peak_activation_bytes'] / 2**20:6.2f} MB "
                                            f"({r['peak_micro_batches']} micro-batches)" for r in rows))
    versus = mpiexec_records(2, __file__, ["--child=versus", *forward])
    records += versus
    print(f"\n3. pipeline (S = 2, M = 8, 1F1B) vs data parallelism on 2 ranks, global batch {args.batch}, "
          f"{versus[0]['params'] if versus else 0} parameters")
    print(f"{'link':>10} {'data parallel ex/s':>19} {'pipeline ex/s':>14}")
    for g in [None] + [float(g) for g in args.gbits.split(",")]:
        row = {r["how"]: r for r in versus if r["gbits"] == g}
        print(f"{'local' if g is None else f'{g:g} Gbit/s':>10} {row['data_parallel']['examples_per_s']:19.0f} "
              f"{row['pipeline_m8']['examples_per_s']:14.0f}")
    for r in records:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
