"""Run under mpiexec: the ring from persistent requests (`ring._persistent_ring`, plain_ring_allreduce over
MPI below PERSISTENT_MAX_BYTES) against the per-call ring (`_reduce_scatter` + `_allgather`, forced by
PERSISTENT_MAX_BYTES = 0): the same bits on float data, the exact sum on integers, on every rank; the same
buffer called again with new data (a kept plan), more buffers than PERSISTENT_PLANS (plans dropped and
freed), sizes below the rank count (empty chunks), odd sizes, pieces of 1, 3, 1000 and 15000 values, 'mean', and
a communicator whose waits poll. The same for direct_allreduce's eager form from persistent requests
(`ring._persistent_direct`) against its per-call form and the ring. Rank 0 prints one JSON line."""
import hashlib
import json

import numpy as np

from fasttrain.parallel import get_comm
from fasttrain.parallel import ring as R

comm = get_comm()
p, r = comm.size, comm.rank


def ints(k, n, call):
    return np.random.default_rng([2, k, n, call]).integers(-1000, 1000, n).astype(np.float32)


def floats(k, n, call):
    return np.random.default_rng([3, k, n, call]).standard_normal(n).astype(np.float32)


def same_everywhere(a):
    return len(set(comm.allgather(hashlib.sha256(a.tobytes()).hexdigest()))) == 1


def per_call_ring(x, op, seg_bytes):
    saved, R.PERSISTENT_MAX_BYTES = R.PERSISTENT_MAX_BYTES, 0
    try:
        return R.plain_ring_allreduce(comm, x, op, seg_bytes)
    finally:
        R.PERSISTENT_MAX_BYTES = saved


SIZES = (1, p - 1, p, 7, 1025, 4099, 65537, 131071)


def exact_sum(n, call, op):
    want = np.sum([ints(k, n, call) for k in range(p)], axis=0, dtype=np.float32)
    return want / np.float32(p) if op == "mean" else want


def check_buffers(allreduce, calls, references, key):
    """allreduce(comm, buf, op, seg_bytes) on each size, piece size and op, one buffer called `calls` times
    (the plan made by the first call is reused): the exact sum on integers, and on floats the bits of each
    reference form (ref(x, op, seg_bytes) in place), the same on every rank. Failures go to `failures`
    under `key`; returns the number of cases checked."""
    checked = 0
    for n in SIZES:
        if n == 0:
            continue
        for seg_bytes in ((4, 12, 60000) if n <= 4099 else (4000, 60000)):  # pieces of 1 / 3 values: small n only
            for op in ("sum", "mean"):
                buf = np.empty(n, np.float32)
                for call in range(calls):
                    buf[...] = ints(r, n, call)
                    allreduce(comm, buf, op, seg_bytes)
                    everywhere = same_everywhere(buf)   # collective: every rank calls it, whatever it found
                    ok_exact = bool(np.array_equal(buf, exact_sum(n, call, op))) and everywhere
                    buf[...] = floats(r, n, call)
                    allreduce(comm, buf, op, seg_bytes)
                    ok_bits = same_everywhere(buf)
                    for reference in references:
                        ref = floats(r, n, call)
                        reference(ref, op, seg_bytes)
                        ok_bits = ok_bits and bool(np.array_equal(buf, ref))
                    checked += 1
                    if not (ok_exact and ok_bits):
                        failures.append({key: n, "seg_bytes": seg_bytes, "op": op, "call": call, "exact": ok_exact,
                                         "bits": ok_bits})
    return checked


failures = []
checked = check_buffers(R.plain_ring_allreduce, 3, [per_call_ring], "n")
kept = len(comm._ring_persistent)
# more buffers than plans: the oldest are dropped (their requests freed); then the first buffers again
bufs = [np.empty(1000 + i, np.float32) for i in range(R.PERSISTENT_PLANS + 3)]
for round_ in range(2):
    for i, b in enumerate(bufs):
        b[...] = ints(r, b.size, round_)
        R.plain_ring_allreduce(comm, b, "sum", 400)
        if not np.array_equal(b, exact_sum(b.size, round_, "sum")):
            failures.append({"evict": i, "round": round_})
# waits that poll (as BucketedAllreduce's thread runs them)
polled = comm.dup(poll_interval_s=1e-5)
b = ints(r, 4099, 7)
R.plain_ring_allreduce(polled, b, "sum", 400)
polled_ok = bool(np.array_equal(b, exact_sum(4099, 7, "sum")))
kept_after_eviction = len(comm._ring_persistent)


def per_call(fn, *args):
    saved, R.PERSISTENT_MAX_BYTES = R.PERSISTENT_MAX_BYTES, 0
    try:
        return fn(*args)
    finally:
        R.PERSISTENT_MAX_BYTES = saved


# direct_allreduce's eager form from persistent requests (`_persistent_direct`): the per-call form's bits
# and the ring's (the same order of additions), the exact sum on integers, plans kept and reused
checked_direct = check_buffers(
    R.direct_allreduce, 2,
    [lambda x, op, seg: per_call(R.direct_allreduce, comm, x, op, seg), per_call_ring], "direct")
direct_plans = sum(1 for k in comm._ring_persistent if k[0] == "direct")
b = ints(r, 4099, 8)
R.direct_allreduce(polled, b, "sum", 400)
polled_ok = polled_ok and bool(np.array_equal(b, exact_sum(4099, 8, "sum")))
if r == 0:
    print(json.dumps({"size": p, "checked": checked, "checked_direct": checked_direct, "failures": failures,
                      "kept_after_sizes": kept, "kept_after_eviction": kept_after_eviction,
                      "plans_max": R.PERSISTENT_PLANS, "direct_plans": direct_plans,
                      "polled_ok": polled_ok, "polled_plans": len(polled._ring_persistent)}))
