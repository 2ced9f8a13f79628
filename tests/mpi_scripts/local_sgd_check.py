"""Run under mpiexec: local SGD with H=1 equals synchronous gradient averaging (plain SGD on a
least-squares problem, every rank its own data shard); H=4 syncs only every 4th step; extra buffers
are averaged. Rank 0 prints one JSON line."""
import json

import numpy as np

from fasttrain.parallel import LocalSGD, get_comm, ring_allreduce

comm = get_comm()
p, r = comm.size, comm.rank
dim, lr, steps = 37, 0.05, 12
rng = np.random.default_rng(r)
X = rng.standard_normal((16, dim)).astype(np.float32)
y = rng.standard_normal(16).astype(np.float32)
w0 = np.random.default_rng(123).standard_normal(dim).astype(np.float32)


def grad(w):
    return (X.T @ (X @ w - y) / len(y)).astype(np.float32)


# synchronous data parallel: average gradients, then step
w_sync = w0.copy()
for _ in range(steps):
    g = grad(w_sync)
    ring_allreduce(comm, g, op="mean")
    w_sync -= lr * g

# local SGD, H = 1: step on the local gradient, then average parameters
w_local = w0.copy()
stats = np.full(5, float(r), np.float32)  # e.g. BN running mean: averaged too
sgd = LocalSGD(comm, w_local, period_H=1, extra=[stats])
for step in range(1, steps + 1):
    w_local -= lr * grad(w_local)
    sgd.after_step(step)

# H = 4 with 2 warm-up syncs: which steps synced
w4 = w0.copy()
sgd4 = LocalSGD(comm, w4, period_H=4, warmup_sync_steps=2)
synced = [s for s in range(1, steps + 1) if (w4.__isub__(lr * grad(w4)) is not None) and sgd4.after_step(s)]
spread = comm.allgather(w4.copy())
if r == 0:
    print(json.dumps({
        "max_diff": float(np.max(np.abs(w_sync - w_local))),
        "scale": float(np.max(np.abs(w_sync - w0))),
        "stats": stats.tolist(),
        "synced": synced,
        "h4_identical_after_sync": all(np.array_equal(spread[0], s) for s in spread),
    }))
