"""Local SGD: every rank steps on its own and the parameter arena is averaged every H steps
(Stich 2019, "Local SGD Converges Fast and Communicates Little"); post-local SGD (Lin et al. 2020,
"Don't Use Large Mini-Batches, Use Local SGD") averages after every step for a warm-up phase first.

A trainer policy, not a fork of the trainer: call `after_step(step)` after each optimizer step.
"""
from __future__ import annotations

import numpy as np

from .comm import Communicator
from .ring import DEFAULT_SEGMENT_BYTES, ring_allreduce


class LocalSGD:
    """Average `arena.data` (and any `extra` arrays: BN running statistics, optimizer state) across
    ranks after step `step` (1-based count of steps taken) when step <= warmup_sync_steps or
    step % period_H == 0. Extras of one dtype are packed into one buffer: one all-reduce."""

    def __init__(self, comm: Communicator, arena, period_H: int, warmup_sync_steps: int = 0,
                 extra: list | None = None, segment_bytes: int = DEFAULT_SEGMENT_BYTES):
        if int(period_H) < 1:
            raise ValueError(f"LocalSGD(period_H={period_H}): expected an integer >= 1")
        if int(warmup_sync_steps) < 0:
            raise ValueError(f"LocalSGD(warmup_sync_steps={warmup_sync_steps}): expected >= 0")
        self.comm = comm
        self.params = arena if isinstance(arena, np.ndarray) else getattr(arena, "data", None)
        if not isinstance(self.params, np.ndarray) or self.params.ndim != 1:
            raise ValueError(f"LocalSGD(arena): expected a ParamArena or a flat array, got {type(arena).__name__}")
        self.H, self.warmup = int(period_H), int(warmup_sync_steps)
        self.extra = list(extra or [])
        for i, e in enumerate(self.extra):
            if not isinstance(e, np.ndarray) or e.dtype not in (np.float32, np.float64):
                raise ValueError(f"LocalSGD(extra[{i}]): expected a float32/float64 NumPy array, "
                                 f"got {type(e).__name__} {getattr(e, 'dtype', '')}")
        self.segment_bytes = segment_bytes
        self.syncs = 0

    def should_sync(self, step: int) -> bool:
        return step <= self.warmup or step % self.H == 0

    def after_step(self, step: int) -> bool:
        """Average if this step is a sync step; returns whether it averaged."""
        if not self.should_sync(step):
            return False
        self.average()
        return True

    def average(self) -> None:
        self.syncs += 1
        if self.comm.size == 1:
            return
        ring_allreduce(self.comm, self.params, op="mean", segment_bytes=self.segment_bytes)
        for dtype in (np.float32, np.float64):
            group = [e for e in self.extra if e.dtype == dtype]
            if not group:
                continue
            packed = np.concatenate([e.ravel() for e in group]).astype(dtype, copy=False)
            ring_allreduce(self.comm, packed, op="mean", segment_bytes=self.segment_bytes)
            k = 0
            for e in group:
                e[...] = packed[k:k + e.size].reshape(e.shape)
                k += e.size
