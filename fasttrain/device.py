"""Where training keeps its arrays: `cpu` (NumPy) or `cuda` (CuPy on the current GPU).

With `cuda`, the parameter arena, gradients, optimizer state, batchnorm statistics and every
activation live on the GPU for the whole run; the loader's host batches are copied to the device
once per step (`Trainer.train_step` calls `arena.xp.asarray`). The kernels are chosen per call
from the arrays' location (fasttrain.backend), so the model code has one path for both."""
from __future__ import annotations

import numpy as np

DEVICES = ("cpu", "cuda")


def array_module(device: str):
    """numpy for 'cpu', cupy for 'cuda' (which must be usable: built, importable and a GPU visible)."""
    if device not in DEVICES:
        raise ValueError(f"device: expected one of {list(DEVICES)}, got {device!r}")
    if device == "cpu":
        return np
    from . import backend

    status = backend.backends()["cuda"]
    if status != "available":
        raise RuntimeError(f"device='cuda': the cuda backend is not usable here ({status})")
    import cupy

    return cupy


def to_host(a):
    """A NumPy copy (or view) of a host or device array."""
    return a.get() if hasattr(a, "__cuda_array_interface__") else np.asarray(a)
