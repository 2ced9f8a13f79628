"""Run under mpiexec: the same run twice, synchronous (gradient all-reduce) and local SGD with H=1
(parameter averaging after every step), plain SGD, same seed; rank 0 compares the parameters of
both checkpoints and prints one JSON line. Argument: a scratch folder."""
import json
import sys

import numpy as np

from fasttrain.cli import build_parser, resolve_config
from fasttrain.train.run import run as train
from fasttrain.parallel import get_comm
from fasttrain.train.checkpoint import read_checkpoint

out = sys.argv[1]
common = ["--optimizer", "sgd", "--lr", "0.05", "--epochs", "1", "--limit", "400", "--schedule", "constant",
          "--monitor-every", "0", "--no-plot", "--dist", "ring"]
params = {}
for name, extra in (("sync", []), ("local", ["--local-sgd", "1"])):
    cfg = resolve_config(build_parser().parse_args(["train", *common, *extra, "--run-dir", f"{out}/{name}"]))
    summary = train(cfg, progress=False)
    if get_comm().rank == 0:
        arrays, _ = read_checkpoint(f"{out}/{name}/checkpoint.npz")
        params[name] = {k: v for k, v in arrays.items() if k.startswith("param/")}
        params[name + "_steps"] = summary["steps"]
if get_comm().rank == 0:
    diff = max(float(np.max(np.abs(params["sync"][k] - params["local"][k]))) for k in params["sync"])
    scale = max(float(np.max(np.abs(v))) for v in params["sync"].values())
    print(json.dumps({"max_diff": diff, "scale": scale, "steps": params["sync_steps"],
                      "identical_keys": sorted(params["sync"]) == sorted(params["local"])}))
