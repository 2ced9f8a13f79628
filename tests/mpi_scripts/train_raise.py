"""Run under plain `mpiexec python`: rank 1 raises inside a training step; the CLI's guard must
print rank 1's message and abort every rank."""
import sys

from fasttrain.cli import main
from fasttrain.parallel import data_parallel

original = data_parallel.DataParallel.after_backward


def after_backward(self, step):
    if self.rank == 1 and step == 5:
        raise ValueError("deliberate failure inside step 5 on rank 1")
    return original(self, step)


data_parallel.DataParallel.after_backward = after_backward
sys.exit(main(["train", *sys.argv[1:]]))
