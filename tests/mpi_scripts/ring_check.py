"""Run under mpiexec: ring all-reduce (plain, bucketed, compressed) against the float64 NumPy sum of
every rank's data. Rank 0 regenerates every rank's data from its seed and prints one JSON line."""
import hashlib
import json
import socket
import sys

import numpy as np

from fasttrain.parallel import BucketedAllreduce, ErrorFeedback, allreduce_algorithm, get_comm, ring_allreduce
from fasttrain.parallel.ring import (direct_allreduce, hierarchical_allreduce, onefence_allreduce, onefence_fits,
                                     oneshot_allreduce, rooted_allreduce)
from fasttrain.parallel.shm import hierarchy


def data(rank, n, seed=0):
    # positive values keep the sum away from zero, so a relative tolerance is meaningful
    return np.random.default_rng([seed, rank, n]).uniform(0.5, 1.5, n).astype(np.float32)


def digest(a):
    return hashlib.sha256(a.tobytes()).hexdigest()


comm = get_comm()
sizes = [int(s) for s in sys.argv[1].split(",")]
seg = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
p, r = comm.size, comm.rank
# on one node mid sizes take the shared-memory window; the cluster tests run it across hosts
out = {"size": p, "cases": [], "algorithm_256k": allreduce_algorithm(comm, 1 << 18),
       "algorithms": {str(b): allreduce_algorithm(comm, b) for b in (1 << 10, 1 << 18, 1 << 22, 1 << 26)},
       "hosts": len(set(comm.allgather(socket.gethostname())))}
#: every algorithm forced at every size (hierarchical and shared_memory fall back to the
#: point-to-point ones where the ranks' placement has no use for them)
FORCED = {"auto": {}, "recursive_doubling": {"small_bytes": 1 << 62},
          "ring": {"small_bytes": 0, "shared_bytes": 0, "mid_bytes": 0},
          "shared_memory": {"small_bytes": 0, "shared_bytes": 1 << 62},
          "halving_doubling": {"small_bytes": 0, "shared_bytes": 0, "mid_bytes": 1 << 62}}
for n in sizes:
    ref = np.sum([data(k, n).astype(np.float64) for k in range(p)], axis=0) if r == 0 else None
    case = {"n": n}
    # "sum"/"mean": the size-based choice of algorithm; "ring_*", "shm_*" (shared-memory window),
    # "hd_sum" (halving-doubling): one algorithm forced at every size, so each stays tested under
    # real MPI whatever the thresholds are
    for key, op, forced in (("sum", "sum", {}), ("mean", "mean", {}),
                            ("ring_sum", "sum", {"small_bytes": 0, "shared_bytes": 0, "mid_bytes": 0}),
                            ("ring_mean", "mean", {"small_bytes": 0, "shared_bytes": 0, "mid_bytes": 0}),
                            ("shm_sum", "sum", {"small_bytes": 0, "shared_bytes": 1 << 62}),
                            ("shm_mean", "mean", {"small_bytes": 0, "shared_bytes": 1 << 62}),
                            ("hd_sum", "sum", {"small_bytes": 0, "shared_bytes": 0, "mid_bytes": 1 << 62})):
        buf = data(r, n)
        ring_allreduce(comm, buf, op=op, segment_bytes=seg, **forced)
        hashes = comm.allgather(digest(buf))
        if r == 0:
            want = ref / p if op == "mean" else ref
            case[key + "_relerr"] = float(np.max(np.abs(buf - want) / np.abs(want))) if n else 0.0
            case[key + "_identical"] = len(set(hashes)) == 1
    # integers in float32: every algorithm must return the exact sum, on every rank
    ints = lambda k: np.random.default_rng([1, k, n]).integers(-1000, 1000, n).astype(np.float32)  # noqa: E731
    exact = np.sum([ints(k) for k in range(p)], axis=0) if r == 0 else None
    for name, forced in FORCED.items():
        buf = ints(r)
        ring_allreduce(comm, buf, segment_bytes=seg, **forced)
        gathered = comm.allgather(digest(buf))
        if r == 0:
            case["exact_" + name] = bool(np.array_equal(buf, exact)) and len(set(gathered)) == 1
    # the algorithms of one rank per host (measured_choice picks among them), called directly so every
    # placement runs them; segments of `seg` bytes cut the chunks of the larger sizes
    # (by default in messages of at most ring.EAGER_BYTES; the *_pieces ones in pieces of `seg` bytes)
    for name, fn in (("oneshot", lambda b: oneshot_allreduce(comm, b)),
                     ("oneshot_pieces", lambda b: oneshot_allreduce(comm, b, piece_bytes=seg)),
                     ("direct", lambda b: direct_allreduce(comm, b, segment_bytes=seg)),
                     ("direct_default", lambda b: direct_allreduce(comm, b)),
                     ("rooted", lambda b: rooted_allreduce(comm, b)),
                     ("rooted_pieces", lambda b: rooted_allreduce(comm, b, piece_bytes=seg))):
        buf = ints(r)
        fn(buf)
        gathered = comm.allgather(digest(buf))
        if r == 0:
            case["exact_" + name] = bool(np.array_equal(buf, exact)) and len(set(gathered)) == 1
    # the hierarchical all-reduce's two ways across hosts, where ranks share hosts
    h = hierarchy(comm)
    for mode in (["slices", "leader"] if h and h.equal else ["leader"] if h else []):
        buf = ints(r)
        hierarchical_allreduce(comm, buf, segment_bytes=seg, mode=mode)
        gathered = comm.allgather(digest(buf))
        if r == 0:
            case["exact_hierarchical_" + mode] = bool(np.array_equal(buf, exact)) and len(set(gathered)) == 1
    # the two-host 'slices' hierarchy (barrier-free in the host: progress counters) in pieces of 3 and 5
    # values (1000 and 5001 for the long buffers): chunks of uneven piece counts; then back to back with the fenced window calls and other
    # sizes, so every call reuses slot halves and counters the previous ones left
    if h and h.equal and h.slices.size == 2:
        ok = True
        for piece in ((12, 20) if n < 40000 else (4000, 20004)):  # values per piece: 3, 5 (1000, 5001)
            buf = ints(r)
            hierarchical_allreduce(comm, buf, segment_bytes=piece, mode="slices")
            ok &= bool(np.array_equal(buf, exact)) if r == 0 else True
            ok &= len(set(comm.allgather(digest(buf)))) == 1
        for i in range(12):
            m = max(1, n // (1 + i % 3))
            buf = np.arange(m, dtype=np.float32) % 7 + r + i
            if i % 4 == 3:
                ring_allreduce(comm, buf, small_bytes=0, shared_bytes=1 << 62)  # the fenced node window
            elif i % 4 == 2:
                onefence_allreduce(comm, buf)
            else:
                hierarchical_allreduce(comm, buf, "mean" if i % 4 == 1 else "sum", segment_bytes=4 * (1 + i), mode="slices")
            want = p * (np.arange(m) % 7 + i) + p * (p - 1) // 2
            want = want.astype(np.float32)
            ok &= bool(np.array_equal(buf, want / np.float32(p) if i % 4 == 1 else want))
        case["exact_hierarchical_stream"] = all(comm.allgather(ok))
    # one fence in the host (the measured alternative to the hierarchical all-reduce for short buffers
    # over two hosts): exact on integers, and the hierarchical all-reduce's bits on floats
    if onefence_fits(comm, 4 * n):
        buf = ints(r)
        onefence_allreduce(comm, buf)
        gathered = comm.allgather(digest(buf))
        a, b = data(r, n), data(r, n)
        onefence_allreduce(comm, a, "mean")
        hierarchical_allreduce(comm, b, "mean", mode="slices")
        same = comm.allgather(bool(np.array_equal(a.view(np.uint32), b.view(np.uint32))))
        if r == 0:
            case["exact_onefence"] = bool(np.array_equal(buf, exact)) and len(set(gathered)) == 1
            case["onefence_same_bits"] = all(same)
    # float64 through the shared window (slots are bytes, viewed per call in the buffer's dtype)
    buf = data(r, n).astype(np.float64)
    ring_allreduce(comm, buf, small_bytes=0, shared_bytes=1 << 62)
    hashes = comm.allgather(digest(buf))
    if r == 0:
        case["shm_f64_relerr"] = float(np.max(np.abs(buf - ref) / np.abs(ref))) if n else 0.0
        case["shm_f64_identical"] = len(set(hashes)) == 1
    # back-to-back shared-window calls (both halves of the slots reused): a missing barrier shows
    # as a rank reading a slot another rank has already overwritten with the next call's values
    ok = True
    for i in range(24):
        buf = np.full(n, r + 1 + i, np.float32)
        ring_allreduce(comm, buf, small_bytes=0, shared_bytes=1 << 62)
        ok &= bool(np.all(buf == p * (p + 1) // 2 + p * i))
    case["shm_repeat_ok"] = all(comm.allgather(ok))
    # MPI's own Allreduce, the reference implementation, on the same data
    buf = data(r, n)
    comm.allreduce_mpi(buf)
    if r == 0:
        case["mpi_relerr"] = float(np.max(np.abs(buf - ref) / np.abs(ref))) if n else 0.0
    # bucketed (background thread when MPI_THREAD_MULTIPLE), buckets not dividing the size
    buf = data(r, n)
    br = BucketedAllreduce(comm, buf, bucket_bytes=3000 if n < 10000 else 700000, op="sum", segment_bytes=seg)
    for i in reversed(range(len(br))):
        br.start(i)
    br.wait()
    br.close()
    hashes = comm.allgather(digest(buf))
    if r == 0:
        case["bucketed_threaded"] = br.threaded
        case["bucketed_relerr"] = float(np.max(np.abs(buf - ref) / np.abs(ref))) if n else 0.0
        case["bucketed_identical"] = len(set(hashes)) == 1
    # compressed, 'once' schedule: error relative to the largest value, ranks identical
    for codec in ("fp16", "bf16", "int8", "int4", "sign", "ef-int8"):
        buf = data(r, n)
        c = ErrorFeedback("int8", n) if codec == "ef-int8" else codec
        ring_allreduce(comm, buf, op="sum", segment_bytes=seg, codec=c, rng=np.random.default_rng(r))
        hashes = comm.allgather(digest(buf))
        if r == 0:
            case[codec + "_err"] = float(np.max(np.abs(buf - ref)) / np.max(np.abs(ref))) if n else 0.0
            case[codec + "_identical"] = len(set(hashes)) == 1
    out["cases"].append(case)
if r == 0:
    print(json.dumps(out))
