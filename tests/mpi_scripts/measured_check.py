"""Run under mpiexec: measured_choice (the pick among the all-reduces of hosts with one rank each)
with injected candidates and an injected decision. Every rank records its picks; rank 0 prints
one JSON line with all ranks' records."""
import json
import time

import numpy as np

from fasttrain.parallel import get_comm
from fasttrain.parallel import ring

comm = get_comm()
p, r = comm.size, comm.rank
ran = []
rig = {}


def rigged(name):
    def fn(c, x):
        ran.append(name)
        time.sleep(rig[name](c.rank))
    return fn


ring._MEASURED_FNS = {c: rigged(c) for c in ring.measured_candidates(5000)}
rig["ring"] = lambda k: 0.05  # the slowest by far throughout: never picked
ring.MEASURED_ROUNDS = 3
out = {}

# 1. each rank alone would pick differently (its own fastest candidate is the one another rank
# finds slowest); the slowest rank's times decide, the same on every rank: oneshot
rig.update(direct=lambda k: 0.04 if k == p - 1 else 0.0, oneshot=lambda k: 0.01,
           rooted=lambda k: 0.04 if k == 0 else 0.0)
out["disagreeing_ranks"] = ring.measured_choice(comm, 5000)

# 2. the decision is rank 0's, broadcast: a pick rule answering differently on every rank (as a
# non-deterministic one might) still leaves every rank with rank 0's answer
real_pick = ring.measured_pick
ring.measured_pick = lambda times, incumbent=None, names=ring.MEASURED_CANDIDATES, *args, **kw: (
    names[r % len(names)], {c: 0.0 for c in names})
out["injected_decision"] = ring.measured_choice(comm, 1 << 14)
ring.measured_pick = real_pick

# 3. counted calls re-measure in step on every rank: after 3 calls, then every 4; the candidates'
# speeds change between measurements and the kept pick follows (by far more than the margin)
ring.MEASURED_AGAIN_AFTER, ring.MEASURED_EVERY = 3, 4
rig.update(direct=lambda k: 0.03, oneshot=lambda k: 0.0, rooted=lambda k: 0.03)
seq = []
for call in range(1, 12):
    if call == 3:
        rig.update(oneshot=lambda k: 0.03, rooted=lambda k: 0.0)
    if call == 7:
        rig.update(rooted=lambda k: 0.03, direct=lambda k: 0.0)
    before = len(ran)
    seq.append((ring.measured_choice(comm, 3000, count=True), len(ran) > before))
out["sequence"] = seq
before = len(ran)
out["uncounted"] = [ring.measured_choice(comm, 3000) for _ in range(5)]  # peeks: no measuring
out["ran_by_peeks"] = len(ran) - before
records = comm.allgather(out)
if r == 0:
    print(json.dumps({"size": p, "ranks": records}))
