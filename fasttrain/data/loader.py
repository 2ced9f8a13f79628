"""Mini-batch loader: per-epoch shuffling from a seeded generator, and a background thread that
prepares the next batch (gather + optional transform) while the current one trains. NumPy's
fancy indexing releases the GIL for the copy, so the thread overlaps with the kernels."""
from __future__ import annotations

import queue
import threading

import numpy as np


class DataLoader:
    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int = 64, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, transform=None, prefetch: int = 1):
        if len(x) != len(y):
            raise ValueError(f"DataLoader: x has {len(x)} examples but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"DataLoader(batch_size): expected a positive integer, got {batch_size}")
        if drop_last and len(x) < batch_size:
            raise ValueError(f"DataLoader: drop_last=True with {len(x)} examples < batch_size {batch_size} "
                             "gives no batches")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.transform = transform
        self.prefetch = prefetch
        self.epoch = 0  # the order of epoch e depends only on (seed, e): resumable and reproducible

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """Example indices for `epoch` (a permutation when shuffling)."""
        if not self.shuffle:
            return np.arange(len(self.x))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.x))

    def _batch(self, idx):
        xb = self.x[idx]
        if self.transform is not None:
            xb = self.transform(xb)
        return np.ascontiguousarray(xb), np.ascontiguousarray(self.y[idx])

    def batches(self, epoch: int, start: int = 0):
        """Batches of `epoch`, skipping the first `start` (to resume mid-epoch)."""
        order = self.order(epoch)
        slices = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and slices and len(slices[-1]) < self.batch_size:
            slices.pop()
        slices = slices[start:]
        if self.prefetch <= 0:
            for idx in slices:
                yield self._batch(idx)
            return
        yield from self._prefetched(slices)

    def _prefetched(self, slices):
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def worker():
            try:
                for idx in slices:
                    if stop.is_set():
                        return
                    q.put(self._batch(idx))
                q.put(done)
            except BaseException as exc:  # re-raised in the consumer, not lost in the thread
                q.put(exc)

        thread = threading.Thread(target=worker, daemon=True, name="fasttrain-prefetch")
        thread.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # drain so a blocked put() can finish
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(0.01)

    def __iter__(self):
        """One epoch; each new iteration advances to the next epoch's order."""
        epoch = self.epoch
        self.epoch += 1
        return self.batches(epoch)
