"""One place for settings: environment flags are read here and nowhere else.

FASTTRAIN_BACKEND   default kernel backend ("auto", "cpp", "numba", "numpy", "cuda")
FASTTRAIN_DEBUG     1: full Python tracebacks from the command line instead of one-line errors
FASTTRAIN_THREADS   CPU threads for the C++ and Numba kernels (default: the cores this process may
                    run on; under an MPI launcher that did not bind ranks to cores, those cores
                    shared out among the ranks it started on this machine)
FASTTRAIN_LAYOUT    "auto" (default): activations flow between layers in the direct convolution
                    engine's channel-blocked layout wherever it runs (fasttrain/nn/layout.py);
                    "nchw": every layer converts on its own (for A/B measurements)
"""
from __future__ import annotations

import logging
import os

_BACKEND_NAMES = ("auto", "cuda", "cpp", "numba", "numpy")


def _env_backend() -> str:
    value = os.environ.get("FASTTRAIN_BACKEND", "auto").strip().lower()
    if value not in _BACKEND_NAMES:
        raise ValueError(f"FASTTRAIN_BACKEND: expected one of {', '.join(_BACKEND_NAMES)}, got {value!r}")
    return value


_LAYOUT_NAMES = ("auto", "nchw")


def _env_layout() -> str:
    value = os.environ.get("FASTTRAIN_LAYOUT", "auto").strip().lower()
    if value not in _LAYOUT_NAMES:
        raise ValueError(f"FASTTRAIN_LAYOUT: expected one of {', '.join(_LAYOUT_NAMES)}, got {value!r}")
    return value


#: ranks an MPI launcher started on this machine: MPICH's hydra, Open MPI
_LOCAL_RANKS_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")


def _positive_int(var: str, raw: str, what: str) -> int:
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{var}: expected a positive integer{what}, got {raw!r}") from None
    if n < 1:
        raise ValueError(f"{var}: expected a positive integer{what}, got {n}")
    return n


def local_ranks() -> int:
    """Ranks the MPI launcher started on this machine, from its environment (1 without one)."""
    for var in _LOCAL_RANKS_VARS:
        raw = os.environ.get(var)
        if raw is not None:
            return _positive_int(var, raw, " rank count")
    return 1


def default_threads() -> int:
    """The cores this process may run on. When a launcher started several ranks here without
    binding them (each sees every core), each takes an equal share: K ranks x all-core OpenMP
    teams on one machine oversubscribe it, and every parallel region then waits for a thread
    that is not scheduled (a 1 MB compressed all-reduce took 24 ms instead of 0.23 ms, 2 ranks
    on 2 cores)."""
    cores = os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    if allowed < cores:  # bound by the launcher (or taskset): the binding already shares the cores
        return allowed
    return max(1, allowed // local_ranks())


def _env_threads() -> int:
    raw = os.environ.get("FASTTRAIN_THREADS")
    return default_threads() if raw is None else _positive_int("FASTTRAIN_THREADS", raw, "")


def debug() -> bool:
    """FASTTRAIN_DEBUG=1: the CLI shows full tracebacks instead of one-line errors."""
    return os.environ.get("FASTTRAIN_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def launcher_rank() -> int:
    """This process's rank as the MPI launcher numbered it (0 without one), without importing MPI."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        raw = os.environ.get(var, "")
        if raw.isdigit():
            return int(raw)
    return 0


_FROM_ENV = {"backend": _env_backend, "num_threads": _env_threads, "layout": _env_layout}


def __getattr__(name):
    # `backend` and `num_threads` are read from the environment on first use, not at import, so
    # that `import fasttrain` succeeds with a bad FASTTRAIN_BACKEND / FASTTRAIN_THREADS and the
    # CLI can report the variable in its one-line error format (set_backend/set_num_threads
    # assign the module attribute, which then shadows this hook)
    if name in _FROM_ENV:
        value = _FROM_ENV[name]()
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_environment() -> None:
    """Read every environment setting now: a bad value raises ValueError naming the variable."""
    for name in _FROM_ENV:
        __getattr__(name) if name not in globals() else None


def rank_prefix() -> str:
    """MPI rank for log prefixes, read from the launcher's environment (no MPI import)."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if var in os.environ:
            return f"[rank {os.environ[var]}] "
    return ""


def get_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    root = logging.getLogger("fasttrain")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(rank_prefix() + "%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        # only rank 0 reports progress and warnings (every rank runs the same steps, and K copies
        # of each line say nothing more); an error is shown by whichever rank meets it
        root.setLevel(logging.INFO if launcher_rank() == 0 else logging.ERROR)
    return logger
