"""All-reduce over a bandwidth-limited link, per codec, with a fitted latency/bandwidth model.

    python bench/netem.py [--ranks 2] [--gbits 1,0.1] [--sizes 262144,1048576,4194304,16777216]

The link is throttled in-process (`ThrottledComm`): every rank's outgoing link carries at most
B bytes/s, a send is posted by a link thread only once the previous bytes would have left the
wire (a token bucket of depth zero), while the rank goes on computing and receiving. No root, no `tc`, no real interface is touched. For each bandwidth, codec
and schedule (ring 'once': fp32 reduce-scatter, encoded all-gather; 'hop', columns CODEC/hop:
every reduce-scatter send encoded too, no error feedback) we time the all-reduce at
several sizes (median of a few runs, slowest rank), fit t = a + b * S by least squares and
print it as the alpha-beta model t = 2 (n - 1) alpha + 2 (n - 1) / n * S / B_eff (Thakur et al.
2005; Patarasuk & Yuan 2009), with B_eff the link rate seen by the fp32 bytes. Compression pays
above the size where its line crosses the uncompressed one: S* = (a_c - a_0) / (b_0 - b_c).
"""
from __future__ import annotations

import argparse
import json
import queue
import statistics
import threading
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import mpiexec_records  # noqa: E402
from fasttrain.parallel import get_comm, launched_world_size, ring_allreduce  # noqa: E402
from fasttrain.parallel.comm import Communicator  # noqa: E402

CODECS = ["none", "fp16", "int8", "int4", "sign"]
#: (column label, codec, schedule): fp32, then each codec 'once' and 'hop'
CONFIGS = [("none", None, "once")] + [(c, c, "once") for c in CODECS[1:]] + [(f"{c}/hop", c, "hop") for c in CODECS[1:]]


class _QueuedSend:
    """A send waiting for the throttled link; the link thread posts it to MPI (`req`) when due."""

    def __init__(self):
        self.req = None
        self.posted = threading.Event()


class ThrottledComm(Communicator):
    """Wraps a communicator; every rank's outgoing link carries at most bytes_per_s.

    isend queues the message and returns at once; a link thread posts it to the real
    communicator only when the previous bytes would have left the wire, so the message reaches
    its peer one transfer time later. The rank itself is never put to sleep: it keeps encoding,
    receiving and progressing MPI while its sends wait for the link, as with a NIC's send queue.
    (Sleeping inside isend stalled the rank's MPI progress, and its peer's rendezvous sends with
    it: compressed, segmented all-reduces came out slower than fp32 at 1 Gbit/s.)"""

    def __init__(self, inner: Communicator, bytes_per_s: float):
        if bytes_per_s <= 0:
            raise ValueError(f"ThrottledComm(bytes_per_s={bytes_per_s}): expected a positive rate")
        if not inner.thread_multiple:
            raise ValueError("ThrottledComm: the link thread posts sends beside the rank's own MPI calls; "
                             "MPI must be initialized with MPI_THREAD_MULTIPLE")
        self.inner, self.rate = inner, float(bytes_per_s)
        self.rank, self.size, self.thread_multiple = inner.rank, inner.size, inner.thread_multiple
        self._free = 0.0
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._link, daemon=True, name="netem-link").start()

    def _link(self):
        while True:
            send, buf, dest, tag, queued_at = self._queue.get()
            self._free = max(queued_at, self._free) + buf.nbytes / self.rate
            while (left := self._free - time.perf_counter()) > 0:
                time.sleep(left if left > 2e-4 else 0)
            send.req = self.inner.isend(buf, dest, tag)
            send.posted.set()

    def isend(self, buf, dest, tag=0):
        send = _QueuedSend()
        self._queue.put((send, buf, dest, tag, time.perf_counter()))
        return send

    def irecv(self, buf, source, tag=0):
        return self.inner.irecv(buf, source, tag)

    def wait(self, req):
        if isinstance(req, _QueuedSend):
            req.posted.wait()
            req = req.req
        self.inner.wait(req)

    def waitall(self, reqs):
        for req in reqs:
            self.wait(req)

    def barrier(self):
        self.inner.barrier()  # every send of the last call was waited for: the link is idle
        self._free = 0.0

    def allgather(self, obj):
        return self.inner.allgather(obj)

    def dup(self, poll_interval_s=None):
        """A duplicate (its own message space) over its own link of the same rate: what a
        communication thread (BucketedAllreduce) sends is throttled too."""
        return ThrottledComm(self.inner.dup(poll_interval_s), self.rate)


def child(args):
    base = get_comm()
    p, r = base.size, base.rank
    sizes = [int(s) for s in args.sizes.split(",")]
    for gbits in [float(g) for g in args.gbits.split(",")]:
        # --tc: the link is a real one, shaped by tc on an emulated cluster (fasttrain.parallel.cluster)
        comm = base if args.tc else ThrottledComm(base, gbits * 1e9 / 8)
        for size in sizes:
            n = size // 4
            src = np.random.default_rng([r, n]).standard_normal(n).astype(np.float32)
            buf = src.copy()
            for label, codec, schedule in CONFIGS:
                rng = np.random.default_rng(r)
                times = []
                for i in range(args.repeat + 1):
                    np.copyto(buf, src)
                    comm.barrier()
                    t0 = time.perf_counter()
                    ring_allreduce(comm, buf, codec=codec, rng=rng, small_bytes=0, schedule=schedule)
                    dt = max(comm.allgather(time.perf_counter() - t0))
                    if i:
                        times.append(dt)
                if r == 0:
                    print(json.dumps({"suite": "netem", "name": "allreduce_tc" if args.tc else "allreduce_throttled", "codec": codec or "none",
                                      "schedule": schedule, "label": label, "gbits": gbits,
                                      "size": size, "ranks": p, "median_s": statistics.median(times),
                                      "min_s": min(times), "max_s": max(times)}), flush=True)


def fit(xs, ys):
    """Least-squares line y = a + b x."""
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(a), float(b)


def parent(args):
    k = args.ranks
    # each rank's codecs use its share of the cores (fasttrain.settings.default_threads)
    child_args = ["--sizes", args.sizes, "--repeat", args.repeat]
    if args.cluster:  # one emulated host per rank, its link shaped by tc: TCP through the kernel
        from fasttrain.parallel.cluster import Cluster, unavailable

        if unavailable():
            sys.exit(f"netem --cluster: no emulated cluster here: {unavailable()}")
        recs = []
        for gbits in args.gbits.split(","):
            with Cluster(k, 1, rate=f"{gbits}gbit") as c:
                proc = c.run([sys.executable, "-m", "mpi4py", str(Path(__file__).resolve()), "--tc", "--gbits", gbits,
                              *map(str, child_args)], timeout=3600, cwd=ROOT)
                if proc.returncode != 0:
                    sys.exit(f"netem --cluster {gbits} Gbit/s failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
                recs += [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    else:
        recs = mpiexec_records(k, Path(__file__).resolve(), ["--gbits", args.gbits, *child_args])
    if args.json:
        Path(args.json).write_text("".join(json.dumps(x) + "\n" for x in recs))
    sizes = sorted({x["size"] for x in recs})
    for gbits in sorted({x["gbits"] for x in recs}, reverse=True):
        at = {(x["label"], x["size"]): x["median_s"] for x in recs if x["gbits"] == gbits}
        labels = [c[0] for c in CONFIGS]
        how = "tc-shaped veth between emulated hosts, TCP" if args.cluster else "in-process throttle"
        print(f"\nK={k}, link {gbits:g} Gbit/s ({how}): ms per all-reduce (median of {args.repeat})")
        print(f"{'size':>8} " + " ".join(f"{c:>8}" for c in labels))
        for s in sizes:
            print(f"{s >> 10:>7}K " + " ".join(f"{at[(c, s)] * 1e3:8.2f}" for c in labels))
        steps = 2 * (k - 1)
        a0, b0 = fit(sizes, [at[("none", s)] for s in sizes])
        print(f"  model (fp32): alpha = {a0 / steps * 1e6:.1f} us/step, B_eff = "
              f"{steps / k / b0 * 8 / 1e9:.3f} Gbit/s (link {gbits:g})")
        for c in labels[1:]:
            a, b = fit(sizes, [at[(c, s)] for s in sizes])
            cross = (a - a0) / (b0 - b) if b < b0 else float("inf")
            when = ("always (at every size)" if cross <= 0 else f"above {cross / 1024:.0f} KB"
                    if np.isfinite(cross) else "never (no bandwidth saved)")
            print(f"  {c:8s} t = {a * 1e3:.3f} ms + S * {b * 1e9:.3f} ns/B  "
                  f"(slope {b / b0:.2f}x fp32)  compression pays {when}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--gbits", default="1,0.1", help="link rates in Gbit/s")
    ap.add_argument("--sizes", default="262144,1048576,4194304,16777216", help="buffer sizes in bytes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="write JSON lines here")
    ap.add_argument("--cluster", action="store_true",
                    help="real TCP instead of the in-process throttle: one emulated host per rank (needs root)")
    ap.add_argument("--tc", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if launched_world_size() > 1:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
