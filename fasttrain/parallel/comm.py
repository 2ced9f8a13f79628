"""A thin communicator interface, so the ring, codecs and local SGD run the same code over MPI
(`MPIComm`), a single process (`LocalComm`) or threads standing in for ranks (`ThreadComm`, for
tests of the ring arithmetic without an MPI launcher).

Point-to-point calls are non-blocking and return requests (MPI-3.1 section 3.7 semantics: a send
buffer must not be modified, nor a receive buffer read, until its request completed).
mpi4py is imported only when the job was launched with more than one rank.
"""
from __future__ import annotations

import os
import queue
import threading
import time

import numpy as np

_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")


def launched_world_size() -> int:
    """World size announced by the launcher's environment (1 when not under mpiexec)."""
    for var in _SIZE_VARS:
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                raise ValueError(f"{var}: expected an integer world size, got {os.environ[var]!r}") from None
    return 1


class Communicator:
    """What the distributed code needs from a communicator."""

    rank: int = 0
    size: int = 1
    #: True when start()ed work may run on a background thread (MPI_THREAD_MULTIPLE)
    thread_multiple: bool = True

    def barrier(self) -> None: raise NotImplementedError
    def isend(self, buf: np.ndarray, dest: int, tag: int = 0): raise NotImplementedError
    def irecv(self, buf: np.ndarray, source: int, tag: int = 0): raise NotImplementedError
    def wait(self, req) -> None: raise NotImplementedError
    def waitall(self, reqs) -> None: raise NotImplementedError
    def allreduce_mpi(self, buf: np.ndarray, op: str = "sum") -> np.ndarray: raise NotImplementedError
    def bcast(self, obj, root: int = 0): raise NotImplementedError
    def allgather(self, obj) -> list: raise NotImplementedError
    def dup(self, poll_interval_s: float | None = None) -> "Communicator": raise NotImplementedError
    def abort(self, code: int = 1) -> None: raise NotImplementedError


def _check_op(op: str) -> str:
    if op not in ("sum", "mean"):
        raise ValueError(f"op: expected 'sum' or 'mean', got {op!r}")
    return op


class LocalComm(Communicator):
    """Size-1 world: collectives are identities, point-to-point has no peer."""

    rank, size = 0, 1

    def barrier(self) -> None:
        pass

    def isend(self, buf, dest, tag=0):
        raise ValueError(f"LocalComm.isend(dest={dest}): a size-1 world has no peer ranks")

    def irecv(self, buf, source, tag=0):
        raise ValueError(f"LocalComm.irecv(source={source}): a size-1 world has no peer ranks")

    def wait(self, req) -> None:
        pass

    def waitall(self, reqs) -> None:
        pass

    def allreduce_mpi(self, buf, op="sum"):
        _check_op(op)
        return buf

    def bcast(self, obj, root=0):
        if root != 0:
            raise ValueError(f"LocalComm.bcast(root={root}): expected root 0 in a size-1 world")
        return obj

    def allgather(self, obj):
        return [obj]

    def dup(self, poll_interval_s=None):
        return LocalComm()

    def abort(self, code=1):
        os._exit(code)

    def __repr__(self):
        return "LocalComm(rank=0, size=1)"


class MPIComm(Communicator):
    """An mpi4py communicator. Buffers are NumPy arrays; mpi4py derives the MPI datatype.

    poll_interval_s > 0: waits test the request and sleep this long between tests instead of
    MPI_Wait, which busy-polls a core until the message is done. For a communication thread
    beside computing threads (BucketedAllreduce): on a node with no core to spare, a spinning
    wait takes the core backward needs (bench/dist_overlap.py: on 2 cores, over a 0.1 Gbit/s
    link, overlap hid 9 of 35 ms with MPI_Wait, 28 ms with 50 us polls)."""

    def __init__(self, comm, poll_interval_s: float = 0.0):
        from mpi4py import MPI
        if not poll_interval_s >= 0:
            raise ValueError(f"MPIComm(poll_interval_s={poll_interval_s!r}): expected seconds >= 0")
        self._MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.thread_multiple = MPI.Query_thread() >= MPI.THREAD_MULTIPLE
        self.poll_interval_s = float(poll_interval_s)

    def barrier(self):
        self.comm.Barrier()

    def isend(self, buf, dest, tag=0):
        return self.comm.Isend(buf, dest, tag)

    def irecv(self, buf, source, tag=0):
        return self.comm.Irecv(buf, source, tag)

    def wait(self, req):
        if self.poll_interval_s:
            while not req.Test():
                time.sleep(self.poll_interval_s)
        else:
            req.Wait()

    def waitall(self, reqs):
        if not reqs:
            return
        if self.poll_interval_s:
            while not self._MPI.Request.Testall(reqs):
                time.sleep(self.poll_interval_s)
        else:
            self._MPI.Request.Waitall(reqs)

    def allreduce_mpi(self, buf, op="sum"):
        """MPI's own Allreduce in place: the reference the ring is tested and benched against."""
        _check_op(op)
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        if op == "mean":
            buf /= self.size
        return buf

    def bcast(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def dup(self, poll_interval_s=None):
        d = MPIComm(self.comm.Dup(), self.poll_interval_s if poll_interval_s is None else poll_interval_s)
        # the same ranks on the same links: the all-reduce choices measured here hold there (a copy:
        # each communicator adds its own in its own order, identical on every rank)
        if hasattr(self, "_ring_measured"):
            d._ring_measured = dict(self._ring_measured)
        return d

    def abort(self, code=1):
        self.comm.Abort(code)

    def __repr__(self):
        return f"MPIComm(rank={self.rank}, size={self.size})"


def get_comm() -> Communicator:
    """MPIComm over COMM_WORLD when launched under mpiexec with more than one rank, else LocalComm."""
    if launched_world_size() > 1:
        from mpi4py import MPI
        return MPIComm(MPI.COMM_WORLD)
    return LocalComm()


# ---------------------------------------------------------------------------------------------
# Threads as ranks: lets tests run the real ring code with K "ranks" in one process.

class _Done:
    def wait(self):
        pass


class _RecvReq:
    def __init__(self, box: queue.Queue, buf: np.ndarray):
        self.box, self.buf = box, buf

    def wait(self):
        data = self.box.get(timeout=60)
        if data.shape != self.buf.shape or data.dtype != self.buf.dtype:
            raise ValueError(f"ThreadComm receive: expected {self.buf.dtype}{self.buf.shape}, got {data.dtype}{data.shape}")
        self.buf[...] = data


class ThreadComm(Communicator):
    """Rank `rank` of a world of `size` threads sharing mailboxes. Sends are buffered (the data is
    copied at isend time); messages between a pair with one tag arrive in order, as in MPI.
    No dup(): bucketed reduction over threads runs synchronously."""

    thread_multiple = False

    def __init__(self, world: "ThreadWorld", rank: int):
        self.world, self.rank, self.size = world, rank, world.size

    def barrier(self):
        self.world.barrier.wait()

    def isend(self, buf, dest, tag=0):
        self.world.box(self.rank, dest, tag).put(np.array(buf, copy=True))
        return _Done()

    def irecv(self, buf, source, tag=0):
        return _RecvReq(self.world.box(source, self.rank, tag), buf)

    def wait(self, req):
        req.wait()

    def waitall(self, reqs):
        for r in reqs:
            r.wait()

    def allgather(self, obj):
        self.world.slots[self.rank] = obj
        self.barrier()
        out = list(self.world.slots)
        self.barrier()
        return out

    def allreduce_mpi(self, buf, op="sum"):
        _check_op(op)
        parts = self.allgather(np.array(buf, copy=True))
        total = np.sum(np.stack(parts), axis=0, dtype=buf.dtype)
        buf[...] = total / self.size if op == "mean" else total
        return buf

    def bcast(self, obj, root=0):
        return self.allgather(obj)[root]


class ThreadWorld:
    """`ThreadWorld(k).run(fn)` calls fn(comm) on k threads and returns the k results."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"ThreadWorld(size={size}): expected at least 1 rank")
        self.size = size
        self.barrier = threading.Barrier(size)
        self.slots = [None] * size
        self._boxes: dict = {}
        self._lock = threading.Lock()

    def box(self, src, dst, tag) -> queue.Queue:
        with self._lock:
            return self._boxes.setdefault((src, dst, tag), queue.Queue())

    def run(self, fn):
        results, errors = [None] * self.size, []

        def body(r):
            try:
                results[r] = fn(ThreadComm(self, r))
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller below
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results
