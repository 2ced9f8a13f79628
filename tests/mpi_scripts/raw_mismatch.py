"""Run under mpiexec: ring_allreduce called with different arguments on different ranks must raise
AllreduceMismatch on every rank (not return wrong values, not hang); rank 0 prints one JSON line
with what each rank raised per case."""
import json

import numpy as np

from fasttrain.parallel import get_comm, ring_allreduce
from fasttrain.parallel.ring import AllreduceMismatch

comm = get_comm()
r = comm.rank
n = 1 << 20
cases = {  # name -> (values, keyword arguments) on this rank
    "size": (n + (r == 1), {}),
    "dtype": (n, {"dtype": np.float64 if r == 1 else np.float32}),
    "op": (n, {"op": "mean" if r == 1 else "sum"}),
    "algorithm": (n, {"shared_bytes": 0 if r == 1 else 1 << 25}),
    "codec": (n, {"codec": "int8" if r == 1 else None}),
    "small_size": (1000 + (r == 1), {}),
}
out = {}
for name, (size, kw) in cases.items():
    kw = dict(kw)
    buf = np.ones(size, kw.pop("dtype", np.float32))
    try:
        ring_allreduce(comm, buf, **kw)
        got = "returned"
    except AllreduceMismatch as exc:
        got = str(exc)
    out[name] = comm.allgather(got)
# a matching call afterwards works (the failed layouts were not cached as verified)
buf = np.ones(n, np.float32)
ring_allreduce(comm, buf)
out["after"] = bool(comm.allreduce_mpi(np.array([float(np.all(buf == comm.size))]), "sum")[0] == comm.size)
if r == 0:
    print(json.dumps(out))
