"""Run under mpiexec: the ring's 'hop' schedule (every reduce-scatter send encoded) for every codec,
against the float64 sum and the error bound derived in tests/hop_bounds.py; fp16/bf16 against the
exact chain of encodes; error feedback over many steps. Rank 0 regenerates every rank's data from
its seed and prints one JSON line."""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for hop_bounds
from hop_bounds import data, encoded_chain, hop_bound  # noqa: E402

from fasttrain.parallel import ErrorFeedback, get_comm, ring_allreduce  # noqa: E402


def digest(a):
    return hashlib.sha256(a.tobytes()).hexdigest()


comm = get_comm()
sizes = [int(s) for s in sys.argv[1].split(",")]
seg = int(sys.argv[2])
steps = int(sys.argv[3])
p, r = comm.size, comm.rank
out = {"size": p, "cases": []}
for n in sizes:
    parts = [data(k, n) for k in range(p)] if r == 0 else None
    case = {"n": n}
    for op in ("sum", "mean"):
        for codec in ("fp16", "bf16", "int8", "int4", "sign", "ef-int8", "ef-sign"):
            buf = data(r, n)
            c = ErrorFeedback(codec[3:], n) if codec.startswith("ef-") else codec
            ring_allreduce(comm, buf, op=op, segment_bytes=seg, codec=c, rng=np.random.default_rng([r, 11]),
                           schedule="hop")
            hashes = comm.allgather(digest(buf))
            if r == 0:
                want = np.sum(np.asarray(parts, np.float64), axis=0) / (p if op == "mean" else 1)
                key = f"{codec}_{op}"
                case[key + "_identical"] = len(set(hashes)) == 1
                case[key + "_err"] = float(np.max(np.abs(buf - want))) if n else 0.0
                case[key + "_bound"] = hop_bound(parts, codec.replace("ef-", ""), op)
                if codec in ("fp16", "bf16"):
                    case[key + "_chain"] = bool(np.array_equal(buf, encoded_chain(parts, codec, op)))
    # no codec: 'hop' is the plain ring, bit for bit
    a, b = data(r, n), data(r, n)
    ring_allreduce(comm, a, segment_bytes=seg, small_bytes=0, shared_bytes=0, mid_bytes=0)
    ring_allreduce(comm, b, segment_bytes=seg, small_bytes=0, shared_bytes=0, mid_bytes=0, schedule="hop")
    case["none_equal"] = all(comm.allgather(bool(np.array_equal(a, b))))
    out["cases"].append(case)

# error feedback over many steps: sum of results - sum of exact sums == -(sum of every rank's
# residual); max error in the second half of the steps against the first half
n = sizes[-1]
for codec in ("int8", "sign"):
    ef = ErrorFeedback(codec, n)
    rng = np.random.default_rng([r, 5])
    total = np.zeros(n) if r == 0 else None
    errs = []
    for t in range(steps):
        g = data(r, n, seed=1 + t) - np.float32(1.0)  # zero-mean drifting values
        ring_allreduce(comm, g, segment_bytes=seg, codec=ef, rng=rng, schedule="hop")
        if r == 0:
            total += g - np.sum([data(k, n, seed=1 + t) - np.float32(1.0) for k in range(p)], axis=0, dtype=np.float64)
            errs.append(float(np.max(np.abs(total))))
    resid = comm.allgather(ef.residual.copy())
    if r == 0:
        out[f"ef_{codec}"] = {"steps": steps, "errs": errs,
                              "identity_err": float(np.max(np.abs(total + np.sum(resid, axis=0, dtype=np.float64))))}
if r == 0:
    print(json.dumps(out))
