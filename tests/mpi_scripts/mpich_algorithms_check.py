"""bench/mpich_algorithms.py under mpiexec: rank 0 prints one JSON line. With
MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM in the environment: the name MPI_T reads and the digest of one
float32 Allreduce. Without: per name set through MPI_T, the name read back and the digests on
COMM_WORLD and on a communicator duplicated after the write; and the error an unknown name raises."""
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.mpich_algorithms import MpichAllreduce  # noqa: E402

world = MPI.COMM_WORLD
# sums whose rounding depends on the order of the additions: each algorithm adds in its own order
src = np.random.default_rng([world.rank, 13]).standard_normal(1 << 15).astype(np.float32)


def digest(comm) -> str:
    buf = src.copy()
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    return hashlib.sha256(buf.tobytes()).hexdigest()[:16]


algs = MpichAllreduce()
out = {"names": algs.names}
if os.environ.get("MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM"):
    out.update(read=algs.get(), digest=digest(world))
else:
    out["runs"] = []
    for name in sys.argv[1].split(","):
        algs.set(name)
        dup = world.Dup()
        out["runs"].append({"set": name, "read": algs.get(), "world": digest(world), "dup": digest(dup)})
        dup.Free()
    try:
        algs.set("no_such_algorithm")
        out["unknown"] = None
    except ValueError as e:
        out["unknown"] = str(e)
algs.close()
if world.rank == 0:
    print(json.dumps(out), flush=True)
