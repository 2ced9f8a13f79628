"""Ctrl-C during Trainer.fit: the first press lets the running step finish, so the trainer can write
a checkpoint that resumes exactly (mid-epoch too); a second press aborts at once. Only in one
process's main thread: under mpiexec every rank gets the signal at a different step, and a
collective save then would hang, so there Ctrl-C keeps its plain meaning."""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by Trainer.fit after Ctrl-C, once the step in flight finished and `checkpoint` (a
    path, or None when the trainer writes none) holds the state to resume from."""

    def __init__(self, checkpoint: str | None, step: int, epoch: int, batch_in_epoch: int):
        self.checkpoint, self.step, self.epoch, self.batch_in_epoch = checkpoint, step, epoch, batch_in_epoch
        where = f"at step {step} (epoch {epoch + 1}, after batch {batch_in_epoch})" if batch_in_epoch \
            else f"at step {step} (after epoch {epoch})"
        saved = f"; the state is saved in {checkpoint}" if checkpoint else "; no checkpoint is written (no run folder)"
        super().__init__(f"interrupted {where}{saved}")


class StopRequest:
    """Set by the first Ctrl-C (or by Trainer.request_stop); the loop checks it between steps."""

    def __init__(self):
        self.requested = False


@contextmanager
def graceful_sigint(request: StopRequest, enabled: bool):
    """While active (and `enabled`, in the main thread), SIGINT sets `request.requested` the first
    time and raises KeyboardInterrupt the second; the previous handler comes back on exit."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def on_sigint(signum, frame):
        if request.requested:
            raise KeyboardInterrupt
        request.requested = True
        print("\nfasttrain: finishing this step and saving a checkpoint (Ctrl-C again to abort at once)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)
