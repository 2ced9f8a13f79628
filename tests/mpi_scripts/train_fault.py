"""Run under plain `mpiexec python` (the CLI's own guard and watchdog are under test): the CLI
trains, and at gradient all-reduce number STEP (before it) the ranks on HOST (a host name, or
'rank:R' for one rank) suffer FAULT:
  stop     SIGSTOP themselves (stopped, never answering)
  exit0    sys.exit(0) (leave the job as if done)
  kill     SIGKILL themselves
  mark     touch the file $FT_FAULT_MARK and go on (the test then cuts the host's link)
Each prints 'fault <FAULT> rank <r> at <unix time>' to stderr first.
usage: train_fault.py FAULT HOST STEP [fasttrain train flags...]"""
import os
import signal
import socket
import sys
import time

from fasttrain.cli import main
from fasttrain.parallel import data_parallel

fault, where, at_step = sys.argv[1], sys.argv[2], int(sys.argv[3])
original = data_parallel.DataParallel.after_backward


def after_backward(self, step):
    me = f"rank:{self.rank}" == where or socket.gethostname() == where
    if step == at_step and (me or fault == "mark" and self.rank == 0):
        sys.stderr.write(f"fault {fault} rank {self.rank} at {time.time():.3f}\n")
        sys.stderr.flush()
        if fault == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        elif fault == "exit0":
            sys.exit(0)
        elif fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault == "mark":
            open(os.environ["FT_FAULT_MARK"], "w").close()
    return original(self, step)


data_parallel.DataParallel.after_backward = after_backward
sys.exit(main(["train", *sys.argv[4:]]))
