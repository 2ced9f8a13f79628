"""Snapshot ensembles: Huang et al., "Snapshot Ensembles: Train 1, get M for free", ICLR 2017.

Train with a cyclic cosine schedule with warm restarts (Loshchilov & Hutter, "SGDR", ICLR 2017);
at the end of each cycle, when the learning rate is at its minimum, the weights sit in a local
minimum: copy arena.data (one array copy). At test time average the softmax probabilities of
the M snapshots.
"""
from __future__ import annotations

import numpy as np


def restart_boundaries(period: int, num_cycles: int, mult: float = 1.0) -> list[int]:
    """The steps at which SGDR cycles end, i.e. where `schedules.CosineRestarts(lr, period, mult)`
    restarts: cycle i lasts period * mult**i steps, rounded the way the schedule rounds
    (e.g. period 10, 3 cycles, mult 2 -> [10, 30, 70])."""
    if period < 1 or num_cycles < 1 or mult < 1:
        raise ValueError(f"restart_boundaries: expected period >= 1, num_cycles >= 1, mult >= 1, "
                         f"got {period}, {num_cycles}, {mult}")
    out, end, length = [], 0, int(period)
    for _ in range(num_cycles):
        end += length
        out.append(end)
        length = int(round(length * mult))
    return out


class SnapshotEnsemble:
    """Callback collecting parameter snapshots at cycle ends.

    Call `callback(step, boundaries)` after each optimizer update with `step` = the number of
    updates done so far (the trainer's counter after incrementing) and `boundaries` = the steps
    at which the schedule's cycles end (e.g. `restart_boundaries(...)`): when step is one of them
    a copy of arena.data is kept. max_snapshots keeps only the most recent M (the paper ensembles
    the last M cycles)."""

    def __init__(self, arena, max_snapshots: int | None = None):
        if max_snapshots is not None and (not isinstance(max_snapshots, (int, np.integer)) or max_snapshots < 1):
            raise ValueError(f"SnapshotEnsemble(max_snapshots): expected None or an int >= 1, got {max_snapshots!r}")
        self.arena = arena
        self.max_snapshots = max_snapshots
        self.snapshots: list = []
        self.steps: list[int] = []

    def take(self, step: int) -> None:
        """Copy the current parameters (unconditionally)."""
        self.snapshots.append(self.arena.xp.array(self.arena.data, copy=True))
        self.steps.append(int(step))
        if self.max_snapshots is not None and len(self.snapshots) > self.max_snapshots:
            del self.snapshots[0], self.steps[0]

    def __call__(self, step: int, boundaries) -> bool:
        """Snapshot if `step` ends a cycle (once per step); returns whether it did."""
        if int(step) in set(int(b) for b in boundaries) and (not self.steps or self.steps[-1] != int(step)):
            self.take(step)
            return True
        return False

    def __len__(self):
        return len(self.snapshots)

    def __iter__(self):
        return iter(self.snapshots)

    def state_dict(self) -> dict:
        return {"snapshots": [np.asarray(s) if self.arena.xp is np else s.get() for s in self.snapshots],
                "steps": list(self.steps)}

    def load_state_dict(self, state: dict) -> None:
        snaps = [self.arena.xp.asarray(s, dtype=self.arena.data.dtype) for s in state["snapshots"]]
        for s in snaps:
            if s.shape != self.arena.data.shape:
                raise ValueError(f"SnapshotEnsemble.load_state_dict: snapshot of shape {s.shape}, "
                                 f"expected {self.arena.data.shape} (the arena)")
        self.snapshots, self.steps = snaps, [int(s) for s in state["steps"]]


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def ensemble_predict(model, arena, snapshots, x, batch_size: int | None = None, predict=None):
    """Mean softmax probabilities (N, K) of `model` over the parameter snapshots (flat arrays
    laid out like arena.data, or a SnapshotEnsemble), in eval mode. The arena's parameters and
    the model's train/eval mode are restored afterwards. predict: batch -> logits instead of
    model.forward, or None where no logits come out (a pipeline stage's `Pipeline.predict`,
    collective: every stage swaps in its own part of each snapshot); the result is then None."""
    forward = model.forward if predict is None else predict
    snapshots = list(snapshots)
    if not snapshots:
        raise ValueError("ensemble_predict(snapshots): expected at least one snapshot, got none")
    for i, s in enumerate(snapshots):
        if tuple(s.shape) != tuple(arena.data.shape):
            raise ValueError(f"ensemble_predict(snapshots[{i}]): expected shape {arena.data.shape} "
                             f"(the arena), got {tuple(s.shape)}")
    n = len(x)
    step = n if batch_size is None else int(batch_size)
    if step < 1 and n:
        raise ValueError(f"ensemble_predict(batch_size): expected a positive int, got {batch_size!r}")
    backup = arena.xp.array(arena.data, copy=True)
    modes = [(m, m.training) for _, m in model.named_modules()]
    total = None
    try:
        model.eval()
        for s in snapshots:
            arena.data[...] = s
            logits = [forward(x[i:i + step]) for i in range(0, n, max(step, 1))]
            if any(z is None for z in logits):
                continue
            probs = np.concatenate([_softmax(np.asarray(z, dtype=np.float64)) for z in logits])
            total = probs if total is None else total + probs
    finally:
        arena.data[...] = backup
        for m, mode in modes:
            m.training = mode
    return None if total is None else total / len(snapshots)
