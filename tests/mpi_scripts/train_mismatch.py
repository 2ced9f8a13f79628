"""Run under plain `mpiexec python`: at step 5 rank 1 runs one gradient all-reduce too many (as a
rank taking another code path would); with --fingerprint-every 1 the next fingerprint must stop
the job with the mismatch message instead of letting the ranks drift or hang."""
import sys

from fasttrain.cli import main
from fasttrain.parallel import data_parallel

original = data_parallel.DataParallel.after_backward


def after_backward(self, step):
    if self.rank == 1 and step == 5:
        original(self, step)
    return original(self, step)


data_parallel.DataParallel.after_backward = after_backward
sys.exit(main(["train", *sys.argv[1:]]))
