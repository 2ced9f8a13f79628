"""Fail fast, with a clear message, when ranks call mismatched collectives.

A rank that calls all-reduce on 21482 values while its peer calls it on 21418 (a different model,
config or code version) would exchange garbage or block forever in MPI. Before a collective, every
`every`-th time (and always the first time), each rank allgathers a small tag: the collective's
name, its size, dtype and codec, the training step, and the count of collectives called so far. All ranks receive
the same list, so all of them detect the mismatch together and raise the same error.

The allgather is itself a collective: it catches ranks that disagree on *what* they reduce, not a
rank that skips a collective altogether (that one is caught by the launcher when the job is
aborted, or by the next fingerprint when the counts differ).
"""
from __future__ import annotations

import hashlib

import numpy as np

from .comm import Communicator
from .watchdog import watched


class CollectiveMismatch(RuntimeError):
    """Ranks called different collectives at the same point of the program."""


class Fingerprint:
    def __init__(self, comm: Communicator, every: int = 100):
        if int(every) < 1:
            raise ValueError(f"Fingerprint(every={every}): expected an integer >= 1")
        self.comm, self.every = comm, int(every)
        self.calls = 0    # collectives announced on this rank
        self.checks = 0   # fingerprints exchanged
        self.watchdog = None  # a watchdog.Watchdog the allgathers run under

    def check(self, name: str, size: int, dtype="float32", detail: str = "", step: int | None = None,
              force: bool = False) -> None:
        """Announce collective `name` over `size` values; every `every`-th call (and the first,
        and when force=True) compare with the other ranks and raise CollectiveMismatch if any
        rank announced something else."""
        call = self.calls
        self.calls += 1
        if self.comm.size == 1 or not (force or call % self.every == 0):
            return
        self.checks += 1
        mine = (str(name), int(size), str(np.dtype(dtype)), str(detail), call, step)
        with watched(self.watchdog, "fingerprint", f"before {name}"):
            tags = self.comm.allgather(mine)
        if all(t == tags[0] for t in tags):
            return
        lines = "; ".join(f"rank {r}: {t[0]}({t[1]} x {t[2]}{', ' + t[3] if t[3] else ''}) as collective #{t[4]}"
                          + (f" at step {t[5]}" if t[5] is not None else "") for r, t in enumerate(tags))
        raise CollectiveMismatch(
            f"collective mismatch detected by fingerprint: {lines}. Every rank must run the same "
            "model, config and code (check that all ranks got the same flags and TOML file).")


def array_digest(a) -> str:
    """Short SHA-256 of an array's bytes (host copy for device arrays)."""
    a = a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else a
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]
