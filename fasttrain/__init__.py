"""fasttrain: a small, readable training core with custom kernels (NumPy reference, C++/OpenMP,
Numba, CUDA) and MPI data parallelism built over a flat parameter arena."""
from __future__ import annotations

import importlib

from .arena import Parameter, ParamArena, ParamGroup
from .backend import backends, get_backend, set_backend, set_num_threads
from .info import build_info

__version__ = "0.1.0"

# Submodules load on first use so `import fasttrain` stays light (no numba, no MPI, no plotting).
_SUBMODULES = ("nn", "optim", "losses", "init", "check", "schedules", "data", "train", "parallel", "dist", "kernels",
               "interop")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'fasttrain' has no attribute {name!r}")


__all__ = ["Parameter", "ParamArena", "ParamGroup", "backends", "get_backend", "set_backend",
           "set_num_threads", "build_info", *_SUBMODULES]
