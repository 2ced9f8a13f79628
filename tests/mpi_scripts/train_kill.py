"""Run under plain `mpiexec python` (no mpi4py runner: the CLI's own guard is under test): the CLI
trains, and rank 1 SIGKILLs itself after N gradient all-reduces. The job must end, non-zero."""
import os
import signal
import sys

from fasttrain.cli import main
from fasttrain.parallel import data_parallel

kill_after = int(sys.argv[1])
original = data_parallel.DataParallel.after_backward


def after_backward(self, step):
    if self.rank == 1 and step == kill_after:
        sys.stderr.write(f"rank 1: SIGKILL at step {step}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, step)


data_parallel.DataParallel.after_backward = after_backward
sys.exit(main(["train", *sys.argv[2:]]))
