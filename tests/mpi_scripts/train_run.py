"""Run under `mpiexec python -m mpi4py`: `fasttrain train` with the given flags through the CLI's
parser and the run assembly (fasttrain.train.run); rank 0 prints one JSON line: the summary plus every rank's parameter hash (allgathered
here, independently of the check DataParallel.finish makes)."""
import json
import sys

from fasttrain.cli import build_parser, resolve_config
from fasttrain.train.run import run as train
from fasttrain.parallel import get_comm

cfg = resolve_config(build_parser().parse_args(["train", *sys.argv[1:]]))
summary = train(cfg, progress=False)
comm = get_comm()
hashes = comm.allgather(summary.get("param_hash"))
if comm.rank == 0:
    print(json.dumps(dict(summary, hashes=hashes)))
