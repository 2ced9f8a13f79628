"""mpiexec -n S*D python -m mpi4py pipeline_check.py S M SCHEDULE [die|kill]: D replicas of an S-stage
pipeline train an MLP for a few steps through the Python API (Pipeline on the grid's stage
communicator, DataParallel on its replica communicator); rank 0 compares the gathered parameters
with single-process training in the same process and prints one JSON line. 'die': the last
stage raises in step 1; 'kill': it is killed (SIGKILL) there; either must end the job."""
import json
import os
import signal
import socket
import sys

import numpy as np

import fasttrain as ft
from fasttrain.parallel import get_comm
from fasttrain.parallel.data_parallel import DataParallel
from fasttrain.parallel.grid import Grid
from fasttrain.parallel.pipeline import Pipeline, micro_rows

S, M, SCHEDULE = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
FAULT = sys.argv[4] if len(sys.argv) > 4 else None
STEPS, BATCH = 3, 12
nn = ft.nn
ft.set_num_threads(1)   # the single-process reference below runs with the ranks' thread count


def build():
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                         nn.Linear(12, 5))


rng = np.random.default_rng(0)
X = rng.standard_normal((STEPS, BATCH, 20)).astype(np.float32)
Y = rng.integers(0, 5, (STEPS, BATCH))
loss = ft.losses.SoftmaxCrossEntropy()

grid = Grid(get_comm(), S)
pipe = Pipeline(build(), grid.pipe, M, SCHEDULE, input_shape=(20,), seed=1)
opt = ft.optim.Momentum(pipe.arena, lr=0.1)
dp = DataParallel(grid.dp, pipe.module, pipe.arena, "ring") if grid.replicas > 1 else None
if dp is not None:
    dp.setup()
per = BATCH // grid.replicas
rows = slice(grid.replica * per, (grid.replica + 1) * per)
for s in range(STEPS):
    pipe.arena.zero_grad()
    if FAULT and s == 1 and pipe.last:
        if FAULT == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"stage {pipe.stage} died")
    pipe.train_step(X[s, rows], Y[s, rows], loss, step=s)
    if dp is not None:
        dp.after_backward(s)
    opt.step()
peaks = grid.pipe.allgather(pipe.peak_in_flight)
hosts = len(set(grid.world.allgather(socket.gethostname())))
state = pipe.gather_state(opt) if grid.replica == 0 else None
if grid.world.rank == 0:
    def reference(micro_batches):
        model = build()
        arena = ft.ParamArena.for_model(model, seed=1)
        ref_opt = ft.optim.Momentum(arena, lr=0.1)
        for s in range(STEPS):
            arena.zero_grad()
            for start, n in micro_rows(BATCH, micro_batches):
                _, d = loss(model.forward(X[s, start:start + n]), Y[s, start:start + n])
                if n != BATCH:
                    d *= np.float32(n / BATCH)
                model.backward(d)
            ref_opt.step()
        return {p.name: p.data for p in arena.params}

    got = {k[6:]: v for k, v in state.items() if k.startswith("param/")}
    acc, whole = reference(M), reference(1)
    print(json.dumps({"identical_to_accumulation": all(np.array_equal(got[k], acc[k]) for k in acc),
                      "max_diff_whole": max(float(np.abs(got[k] - whole[k]).max()) for k in whole),
                      "scale": max(float(np.abs(v).max()) for v in whole.values()),
                      "peak_in_flight": peaks, "stages": S, "replicas": grid.replicas, "hosts": hosts}))
