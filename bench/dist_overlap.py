"""Overlap of the gradient all-reduce with backward (issue 8), classic conv net, K ranks.

    python bench/dist_overlap.py [--ranks 2] [--batch 32] [--width 32] [--bucket-kb 256] [--repeat 10] [--gbits G]

Four timings per step (median over repeats of the slowest rank, after warm-up):
  backward only      forward + backward, no communication (the floor);
  allreduce only     the ring all-reduce of the whole gradient arena, by itself;
  sequential         forward + backward, then one ring all-reduce of the arena;
  overlapped         forward + backward layer by layer; a bucket (a contiguous arena range,
                     BucketedAllreduce) is started on the communication thread as soon as every
                     parameter it covers has its gradient, and all are waited for at the end
                     (what `fasttrain train --dist ring --bucket-kb N` does each step).
The gain is sequential - overlapped; at most min(backward, allreduce). Prints a table and JSON
lines (suite="dist_overlap"). Re-launches itself under mpiexec when started without one.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fasttrain as ft  # noqa: E402
from bench.harness import mpiexec_records  # noqa: E402
from fasttrain.parallel import BucketedAllreduce, get_comm, launched_world_size, ring_allreduce  # noqa: E402
from fasttrain.parallel.data_parallel import bucket_schedule  # noqa: E402
from fasttrain.losses import SoftmaxCrossEntropy  # noqa: E402
from fasttrain.models import convnet_classic  # noqa: E402


def child(args):
    comm = get_comm()
    if args.gbits:  # a slow link, where the all-reduce is worth hiding behind backward
        from bench.netem import ThrottledComm
        comm = ThrottledComm(comm, args.gbits * 1e9 / 8)
    ft.set_num_threads(max(1, (os.cpu_count() or 1) // comm.size))
    rng = np.random.default_rng(comm.rank)
    model = convnet_classic(3, 10, 32, width=args.width, dropout=0.0)
    arena = ft.ParamArena.for_model(model, seed=0)
    loss_fn = SoftmaxCrossEntropy()
    x = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    br = BucketedAllreduce(comm, arena.grad, bucket_bytes=args.bucket_kb * 1024, op="mean")
    layers, plan = model._children, bucket_schedule(model, arena, br.bounds)

    def fwd_bwd():
        arena.zero_grad()
        _, d = loss_fn(model.forward(x), y)
        model.backward(d)

    def allreduce():
        ring_allreduce(comm, arena.grad, op="mean")

    def sequential():
        fwd_bwd()
        allreduce()

    def overlapped():
        arena.zero_grad()
        _, d = loss_fn(model.forward(x), y)
        for li in reversed(range(len(layers))):
            d = layers[li][1].backward(d)
            for b in plan[li]:
                br.start(b)
        br.wait()

    def timed(fn):
        out = []
        for i in range(args.repeat + 2):
            comm.barrier()
            t0 = time.perf_counter()
            fn()
            dt = max(comm.allgather(time.perf_counter() - t0))
            if i >= 2:
                out.append(dt)
        return statistics.median(out)

    # check first: the overlapped path gives the sequential path's gradient, bit for bit
    sequential()
    ref = arena.grad.copy()
    overlapped()
    same = bool(np.array_equal(ref, arena.grad))
    res = {name: timed(fn) for name, fn in (("backward only", fwd_bwd), ("allreduce only", allreduce),
                                             ("sequential", sequential), ("overlapped", overlapped))}
    br.close()
    if comm.rank == 0:
        print(json.dumps({"suite": "dist_overlap", "ranks": comm.size, "batch": args.batch, "width": args.width, "gbits": args.gbits or None,
                          "params": arena.size, "arena_bytes": arena.size * 4, "buckets": len(br.bounds),
                          "threaded": br.threaded, "overlap_equals_sequential": same,
                          **{k.replace(" ", "_") + "_ms": 1e3 * v for k, v in res.items()},
                          "gain_ms": 1e3 * (res["sequential"] - res["overlapped"])}))


def parent(args, argv):
    r = mpiexec_records(args.ranks, Path(__file__).resolve(), argv, timeout_s=600)[-1]
    print(f"convnet_classic width {r['width']}, batch {r['batch']}, {r['params']} params "
          f"({r['arena_bytes'] / 1e6:.2f} MB), K={r['ranks']}, link {str(r['gbits']) + ' Gbit/s' if r['gbits'] else 'unthrottled'}, {r['buckets']} buckets, threaded={r['threaded']}, "
          f"overlapped grads == sequential: {r['overlap_equals_sequential']}")
    for k in ("backward_only", "allreduce_only", "sequential", "overlapped"):
        print(f"  {k.replace('_', ' '):16s} {r[k + '_ms']:8.2f} ms")
    print(f"  gain             {r['gain_ms']:8.2f} ms ({100 * r['gain_ms'] / r['sequential_ms']:.1f}% of a step)")
    print(json.dumps(r))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--bucket-kb", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--gbits", type=float, default=0.0,
                    help="throttle every rank's link to this many Gbit/s (bench/netem.py's ThrottledComm; 0: off)")
    args = ap.parse_args(argv)
    if launched_world_size() > 1:
        child(args)
    else:
        parent(args, argv)


if __name__ == "__main__":
    main()
