"""build_info(): what was built and what this process can use."""
from __future__ import annotations

import importlib.util
import platform

from . import settings


def build_info() -> dict:
    info: dict = {"python": platform.python_version(), "threads": settings.num_threads}
    try:
        from . import _C

        info["cpp"] = dict(_C.build_info())
    except ImportError as exc:
        info["cpp"] = f"not built: {exc}"
    try:
        from . import _cuda

        cuda = dict(_cuda.build_info())
        cuda["devices"] = _cuda.device_count()
        info["cuda"] = cuda
    except ImportError:
        info["cuda"] = "not built (no nvcc at build time, or FASTTRAIN_CUDA=OFF)"
    info["numba"] = _version_of("numba")
    info["mpi"] = _mpi_library()
    info["backend"] = settings.backend
    return info


def _version_of(name: str) -> str:
    if importlib.util.find_spec(name) is None:
        return "not installed"
    from importlib.metadata import version

    return version(name)


def _mpi_library() -> str:
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py not installed"
    try:
        from mpi4py import MPI

        return MPI.Get_library_version().splitlines()[0].strip()
    except Exception as exc:  # an MPI library that fails to load is reported, not raised
        return f"mpi4py present, MPI library failed to load: {exc}"
