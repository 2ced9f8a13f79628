"""Where a 2-host hierarchical all-reduce's time goes when no rank waits for a core: every rank stamps
each step of `_hierarchical_two_hosts` (perf_counter; CLOCK_MONOTONIC is one clock for all namespaces),
calls run between barriers; of N calls the fastest 20 % (by the slowest rank's end) are kept and the
median offset of each step from the call's start (the earliest rank's barrier exit) is printed per
rank. Needs root.

    python bench/dev/timeline.py [--rate 10gbit] [--size 65536] [--calls 400]
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fasttrain.parallel import get_comm, launched_world_size  # noqa: E402


def hier_stamped(h, buf, st):
    from fasttrain.parallel import ring as R
    from fasttrain.parallel import shm as S
    pc = time.perf_counter
    w, other = h.window, h.slices
    n = buf.size
    chunk_values = -(-n // w.size)
    s = w.stream(buf, max(1, R.piece_bytes_for(chunk_values * buf.itemsize) // buf.itemsize))
    st.append(("stream", pc()))
    peer = 1 - other.rank
    pieces = s.pieces
    inbox = R._scratch("hier_inbox", pieces[-1][1] if pieces else 0, buf.dtype)
    st.append(("scratch", pc()))
    recvs = [other.irecv(inbox[x:y], peer, R._TAG_RS) for x, y in pieces]
    st.append(("irecv", pc()))
    sends = []
    progress = functools.partial(R._test_all, other, sends)
    st.append(("setup", pc()))
    for i in range(s.rounds):
        s.copy_in(i)
    st.append(("copied_in", pc()))
    for i in range(len(pieces)):
        for q, n in s._layout[4][i]:
            S._await(s.w, q, 0, s.tag | n, progress)
        st.append(("awaited", pc()))
        x, y = s.pieces[i]
        v = S.NodeWindow.reduce_piece(s.buf, s._layout[0], x, y)
        st.append(("reduced", pc()))
        sends.append(other.isend(v, peer, R._TAG_RS))
    st.append(("sent", pc()))
    for i, ((x, y), rq, sq) in enumerate(zip(pieces, recvs, sends)):
        other.wait(rq)
        st.append(("recv", pc()))
        other.wait(sq)
        st.append(("send_done", pc()))
        mine, theirs = s.result(i), inbox[x:y]
        if other.rank == 0:
            np.add(mine, theirs, out=mine)
        else:
            np.add(theirs, mine, out=mine)
        st.append(("added", pc()))
        s.done(i)
        st.append(("done", pc()))
        s.collect(False)
    s.collect(True)
    st.append(("collected", pc()))
    return buf


def child(args):
    from fasttrain.parallel import ring as R
    comm = get_comm()
    h = R.hierarchy(comm)
    buf = np.ones(args.size // 4, np.float32)
    fns = {"hier": lambda st: hier_stamped(h, buf, st),
           "auto": lambda st: R.ring_allreduce(comm, buf)}
    for _ in range(70):
        R.ring_allreduce(comm, buf)
    for name, fn in fns.items():
        calls = []
        for _ in range(args.calls):
            comm.barrier()
            st = [("start", time.perf_counter())]
            fn(st)
            st.append(("end", time.perf_counter()))
            calls.append(st)
        every = comm.allgather(calls)
        if comm.rank == 0:
            spans = []
            for c in range(args.calls):
                t0 = min(every[r][c][0][1] for r in range(comm.size))
                spans.append((max(every[r][c][-1][1] for r in range(comm.size)) - t0, c, t0))
            spans.sort()
            keep = spans[:max(1, args.calls // 5)]
            print(f"{name} {args.rate} {args.size >> 10} KB: fastest 20 % of {args.calls}: span median "
                  f"{np.median([s for s, _, _ in keep]) * 1e6:.0f} us (all calls: {np.median([s for s, _, _ in spans]) * 1e6:.0f} us)")
            for r in range(comm.size):
                steps = [k for k, _ in every[r][keep[0][1]]]
                med = [np.median([(every[r][c][i][1] - t0) * 1e6 for _, c, t0 in keep]) for i in range(len(steps))]
                print(f"  rank {r}: " + "  ".join(f"{k} {m:.0f}" for k, m in zip(steps, med)))
            for r in range(comm.size):
                steps = [k for k, _ in every[r][0]]
                if len(steps) < 3:
                    continue
                d = np.array([[every[r][c][i + 1][1] - every[r][c][i][1] for i in range(len(steps) - 1)]
                              for c in range(args.calls) if len(every[r][c]) == len(steps)]) * 1e6
                print(f"  rank {r} step durations us (min / p20): " + "  ".join(
                    f"{steps[i + 1]} {d[:, i].min():.0f}/{np.quantile(d[:, i], 0.2):.0f}" for i in range(len(steps) - 1)))
            sys.stdout.flush()


def parent(args):
    from fasttrain.parallel.cluster import Cluster
    with Cluster(2, 2, rate=args.rate) as c:
        proc = c.run([sys.executable, "-m", "mpi4py", str(Path(__file__).resolve()), "--child", "--rate", args.rate,
                      "--size", str(args.size), "--calls", str(args.calls)], timeout=900, cwd=ROOT)
        print(proc.stdout)
        if proc.returncode != 0:
            sys.exit(f"timeline: failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", default="10gbit")
    ap.add_argument("--size", type=int, default=64 << 10)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child or launched_world_size() > 1:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
