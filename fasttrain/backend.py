"""Kernel registry: one name per operation, identical signatures across backends.

Each op lives in a family (`fasttrain/kernels/<family>.py` holds `<op>_ref`). Backends:
  numpy  the reference, always available;
  cpp    fasttrain._C (C++/OpenMP), when built;
  numba  fasttrain/kernels/numba/<family>.py, when numba is installed (imported lazily);
  cuda   fasttrain._cuda, for CuPy arrays, when built and a GPU is present.
`backend="auto"` picks, for CPU arrays, the first of cpp, numba, numpy that implements the op;
for GPU arrays, cuda. A backend asked for by name that is missing or lacks the op raises.
"""
from __future__ import annotations

import importlib
import sys
import threading
from typing import Callable

import numpy as np

from . import settings

CPU_ORDER = ("cpp", "numba", "numpy")

_unavailable: dict[str, str] = {}
_modules: dict[str, object] = {}


def _load(backend: str):
    """The backend's module (or None), remembering why it is missing."""
    if backend in _modules:
        return _modules[backend]
    module = None
    try:
        if backend == "cpp":
            module = importlib.import_module("fasttrain._C")
            module.set_num_threads(settings.num_threads)
            from ._malloc import retain_freed_memory

            retain_freed_memory()   # each step's arrays reuse the last step's pages (fasttrain/_malloc.py)
        elif backend == "cuda":
            module = importlib.import_module("fasttrain._cuda")
            if module.device_count() == 0:
                _unavailable[backend] = "fasttrain._cuda is built but no CUDA device is visible"
                module = None
        elif backend == "numba":
            importlib.import_module("numba")
            module = importlib.import_module("fasttrain.kernels.numba")
        elif backend == "numpy":
            module = importlib.import_module("fasttrain.kernels")
        else:
            raise ValueError(f"backend: expected one of {settings._BACKEND_NAMES}, got {backend!r}")
    except ImportError as exc:
        _unavailable[backend] = f"{type(exc).__name__}: {exc}"
        module = None
    _modules[backend] = module
    return module


def backend_status(name: str) -> str:
    """'available' or the reason backend `name` is not; loads only that backend (a config check
    of --backend cuda need not import numba)."""
    return "available" if _load(name) is not None else _unavailable.get(name, "unavailable")


def backends() -> dict[str, str]:
    """Each backend and either 'available' or the reason it is not."""
    return {name: backend_status(name) for name in ("cpp", "numba", "numpy", "cuda")}


def set_backend(name: str) -> None:
    """Set the default backend for every kernel call ("auto" restores the documented order)."""
    if name not in settings._BACKEND_NAMES:
        raise ValueError(f"set_backend(name): expected one of {settings._BACKEND_NAMES}, got {name!r}")
    if name != "auto" and _load(name) is None:
        raise RuntimeError(f"set_backend({name!r}): backend is not available: {_unavailable.get(name)}")
    settings.backend = name


def get_backend() -> str:
    return settings.backend


def set_num_threads(n: int) -> None:
    """One thread count for the whole package, handed explicitly to C++ and Numba kernels."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads(n): expected a positive int, got {n!r}")
    settings.num_threads = n
    if _modules.get("cpp") is not None:
        _modules["cpp"].set_num_threads(n)
    # the numba kernels may have been imported directly, not through the registry
    if _modules.get("numba") is not None or "fasttrain.kernels.numba" in sys.modules:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _is_gpu(x) -> bool:
    return type(x).__module__.startswith("cupy")


def _lookup(module, backend: str, op: str):
    if backend == "numpy":
        family = importlib.import_module(f"fasttrain.kernels.{FAMILY[op]}")
        return getattr(family, f"{op}_ref", None)
    if backend == "numba":
        try:
            family = importlib.import_module(f"fasttrain.kernels.numba.{FAMILY[op]}")
        except ModuleNotFoundError:
            return None
        return getattr(family, op, None)
    if backend == "cuda":
        # the shim passes CuPy's current stream to every launch
        return getattr(importlib.import_module("fasttrain.kernels.cuda"), op, None)
    return getattr(module, op, None)


_cache: dict[tuple[str, str], Callable] = {}


def kernel(op: str, like=None, backend: str | None = None) -> Callable:
    """The implementation of `op` for arrays like `like` under `backend` (default: the setting)."""
    if op not in FAMILY:
        raise KeyError(f"kernel(op): unknown op {op!r}; known: {sorted(FAMILY)}")
    backend = backend or settings.backend
    wide = like is not None and getattr(like, "dtype", np.float32) != np.float32
    if wide:
        # The fast backends are float32; other dtypes (float64 for gradient checks) run the
        # reference, which is written for any float dtype.
        if backend not in ("auto", "numpy"):
            raise TypeError(f"kernel {op!r} with backend {backend!r}: expected float32 arrays, got {like.dtype}; "
                            "only the numpy reference runs other dtypes")
        backend = "numpy"
    if backend == "auto":
        candidates = ("cuda",) if like is not None and _is_gpu(like) else CPU_ORDER
    else:
        candidates = (backend,)
    for name in candidates:
        key = (name, op)
        if key in _cache and not wide:
            return _cache[key]
        module = _load(name)
        if module is None:
            continue
        fn = _lookup(module, name, op)
        if fn is not None:
            _cache[key] = fn
            return fn
    if backend == "auto" or wide:
        raise RuntimeError(f"kernel {op!r}: no backend implements it for this array "
                           f"(tried {candidates}; {backends()})")
    reason = _unavailable.get(backend) or f"backend {backend!r} does not implement {op!r}"
    raise RuntimeError(f"kernel {op!r} with backend {backend!r}: {reason}")


def available_backends_for(op: str) -> list[str]:
    """Every CPU backend that implements `op` (used by tests to compare each with the reference)."""
    out = []
    for name in CPU_ORDER:
        module = _load(name)
        if module is not None and _lookup(module, name, op) is not None:
            out.append(name)
    return out


# Kernel families: each module fasttrain/kernels/<family>.py lists its ops in `OPS` and holds
# `<op>_ref` for each; backends use the same op names.
FAMILIES = ("linear", "conv2d", "batchnorm", "dropout", "activations", "pooling", "losses", "optim", "blocked")
# The blocked layout's kernels exist only in C++ (and their reference): the layout flows between
# the direct convolutions, which only the C++ backend has.
CPP_ONLY_FAMILIES = ("blocked",)


class _FamilyTable(dict):
    """op -> family, filled from the reference modules on first use."""

    _lock = threading.Lock()

    def _fill(self):
        # filled whole, under a lock: threads standing in for ranks (ThreadComm) call their first
        # kernels together, and one must not read the table while another is half-way through it
        if dict.__len__(self):
            return
        with self._lock:
            if dict.__len__(self):
                return
            table = {}
            for family in FAMILIES:
                mod = importlib.import_module(f"fasttrain.kernels.{family}")
                for op in mod.OPS:
                    table[op] = family
            dict.update(self, table)

    def __contains__(self, op):
        self._fill()
        return dict.__contains__(self, op)

    def __getitem__(self, op):
        self._fill()
        return dict.__getitem__(self, op)

    def __iter__(self):
        self._fill()
        return dict.__iter__(self)


FAMILY = _FamilyTable()
