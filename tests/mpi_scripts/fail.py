"""Run under `mpiexec python -m mpi4py`: rank 1 raises while rank 0 waits for a message that
never comes; mpi4py's runner must abort the whole job."""
import numpy as np

from fasttrain.parallel import get_comm

comm = get_comm()
if comm.rank == 1:
    raise RuntimeError("deliberate failure on rank 1")
buf = np.empty(4, np.float32)
comm.wait(comm.irecv(buf, 1))
