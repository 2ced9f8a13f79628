"""One place for settings: environment flags are read here and nowhere else.

FASTTRAIN_BACKEND   default kernel backend ("auto", "cpp", "numba", "numpy", "cuda")
FASTTRAIN_THREADS   CPU threads for the C++ and Numba kernels (default: all cores)
"""
from __future__ import annotations

import logging
import os

_BACKEND_NAMES = ("auto", "cuda", "cpp", "numba", "numpy")


def _env_backend() -> str:
    value = os.environ.get("FASTTRAIN_BACKEND", "auto").strip().lower()
    if value not in _BACKEND_NAMES:
        raise ValueError(f"FASTTRAIN_BACKEND: expected one of {_BACKEND_NAMES}, got {value!r}")
    return value


def _env_threads() -> int:
    raw = os.environ.get("FASTTRAIN_THREADS")
    if raw is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"FASTTRAIN_THREADS: expected a positive integer, got {raw!r}") from None
    if n < 1:
        raise ValueError(f"FASTTRAIN_THREADS: expected a positive integer, got {n}")
    return n


backend: str = _env_backend()
num_threads: int = _env_threads()


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
        root.setLevel(logging.INFO)
    return logger
