"""All-reduce through an MPI-3 shared-memory window, for a communicator whose ranks share one node.

The same reduce-scatter + all-gather as the ring, with the node's memory as the wire: every rank
copies its buffer into its own slot of a window made by MPI_Win_allocate_shared (MPI-3.1
section 11.2.3), then rank r sums chunk r of every slot into its own slot, then every rank
copies chunk j out of slot j. Two barriers per call instead of the ring's 2 (p - 1) message
rounds: on a node with more ranks than cores (4 ranks on this machine's 2) each round is a wait
for the peer to be scheduled, and the barrier count is what the time follows. Each chunk is
summed by one rank and copied by the others, so ranks end bit-identical.

Synchronization is the "unified memory model" pattern of MPI-3.1 section 11.7 (example 11.21):
a passive-target epoch (Lock_all) held for the window's life, and Win_sync + Barrier + Win_sync
wherever one rank reads what another wrote. Slots have two halves used on alternate calls, so a
rank may start the next call (and overwrite its slot) while a slower rank still copies chunks of
the previous result: by the time anyone reads the half it rewrites, every rank has passed the
next call's first barrier, after its copy-out.

`stream` is the same reduce-scatter and copy-out with no barrier: each rank publishes how far it
has got (how many pieces it has copied in, how many result pieces it has finished) in progress
counters at the end of its slot, and a reader waits for the counter of the piece it needs
(Win_sync between the data and the counter on both sides: the polling pattern of MPI-3.1
section 11.7). A piece is used as soon as it is there, so the host's copy-in, sums and copy-out
overlap each other and whatever runs between them, and no rank waits for the slowest at a barrier.
"""
from __future__ import annotations

import os

import numpy as np

from . import ring as _ring  # chunk_offsets; ring imports this module, so looked up at call time
from .comm import Communicator, MPIComm

_ALIGN = 64
#: bytes after each rank's two slot halves holding its progress counters for `stream` (int64: [0]
#: copy-in pieces written, [1] result pieces finished, each tagged with the call's number in the
#: upper 32 bits, so a counter only grows and is never reset between calls); one cache line
_COUNTERS = 64
#: a `stream` reader polls a counter this many times before it yields its core at every further poll
#: (on a node with more ranks than cores the writer may be waiting for that core)
_SPINS = 32


class NodeWindow:
    """Shared slots of a single-node communicator, grown (collectively) to the largest buffer."""

    def __init__(self, node_comm):
        from mpi4py import MPI
        self._MPI, self.node = MPI, node_comm
        self.rank, self.size = node_comm.Get_rank(), node_comm.Get_size()
        self.win, self.slots, self.half, self.parity = None, [], 0, 0
        self.counters: list = []
        self.calls = 0  # `stream` calls: the tag of their progress counters (the same on every rank)
        self._plans: dict = {}

    def _grow(self, nbytes: int) -> None:
        """A window whose slots hold two buffers of nbytes. Collective: every rank asks for the same
        nbytes (an all-reduce's buffers have one size on all ranks)."""
        self._plans.clear()  # their views point into the window freed below
        self.slots = []
        if self.win is not None:
            self.win.Unlock_all()
            self.win.Free()
        half = -(-max(nbytes, 1) // _ALIGN) * _ALIGN
        info = self._MPI.Info.Create()
        info.Set("alloc_shared_noncontig", "true")  # each rank's slot on its own pages
        try:
            self.win = self._MPI.Win.Allocate_shared(2 * half + _COUNTERS, 1, info=info, comm=self.node)
        except self._MPI.Exception as e:
            raise RuntimeError(f"shared-memory all-reduce: MPI could not allocate a window of {2 * half} bytes per "
                               f"rank ({e}); raise the node's shared-memory limits or pass shared_bytes=0 to "
                               "ring_allreduce to use the point-to-point algorithms") from e
        finally:
            info.Free()
        self.slots = [np.frombuffer(self.win.Shared_query(j)[0], np.uint8) for j in range(self.size)]
        self.counters = [s[2 * half:2 * half + _COUNTERS].view(np.int64) for s in self.slots]
        self.half, self.parity = half, 0
        self.win.Lock_all()
        self.counters[self.rank][...] = 0  # before any peer polls them: the fence below
        self._fence()

    def _plan(self, n: int, dtype: np.dtype, base: int):
        """Views of the slots for a buffer of n values at offset base, made once per layout: a
        256 KB all-reduce is tens of microseconds, and slicing p slots per call was a fifth of it."""
        key = (n, dtype, base)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= 64:  # buckets come in a few sizes; anything else is churn
                self._plans.clear()
            p, r = self.size, self.rank
            slot = [s[base:base + n * dtype.itemsize].view(dtype) for s in self.slots]
            off = [int(x) for x in _ring.chunk_offsets(n, p)]
            a, b = off[r], off[r + 1]
            peers = [slot[j][a:b] for j in range(p) if j != r]  # rank order: a fixed sum order per chunk
            results = [(off[j], off[j + 1], slot[j][off[j]:off[j + 1]]) for j in range(p)]
            plan = self._plans[key] = (slot[r], a, b, peers, results)
        return plan

    def _fence(self) -> None:
        self.win.Sync()
        self.node.Barrier()
        self.win.Sync()

    def share(self, buf: np.ndarray):
        """The first half of the reduce-scatter: every rank's buffer into its slot, then a fence.
        Returns the plan (this rank's slot, its chunk's start and stop, the peers' views of that
        chunk, every chunk's (start, stop, slot view)) for `reduce_piece` and `finish`."""
        if buf.nbytes > self.half:
            self._grow(max(buf.nbytes, 2 * self.half))
        plan = self._plan(buf.size, buf.dtype, self.parity * self.half)
        self.parity ^= 1
        mine_slot, a, b = plan[:3]
        # only the chunks other ranks sum go through the slot: writing shared lines a peer has
        # read costs a cross-core invalidation each, the copy-in is the most expensive step
        mine_slot[:a] = buf[:a]
        mine_slot[b:] = buf[b:]
        self._fence()
        return plan

    @staticmethod
    def reduce_piece(buf: np.ndarray, plan, x: int, y: int) -> np.ndarray:
        """Values x:y of this rank's chunk (offsets within the chunk) summed over the node into its
        slot, own values first, then the other ranks' in rank order (a fixed order per value, so
        summing the chunk whole or piece by piece gives the same bits). Returns the summed view."""
        mine_slot, a, _, peers, _ = plan
        mine = mine_slot[a + x:a + y]
        src = buf[a + x:a + y]
        for peer in peers:
            np.add(src, peer[x:y], out=mine)
            src = mine
        if not peers:
            mine[...] = src
        return mine

    def finish(self, buf: np.ndarray, plan) -> np.ndarray:
        """The all-gather half: a fence, then every chunk copied out of its owner's slot."""
        self._fence()
        for x, y, result in plan[4]:
            buf[x:y] = result
        return buf

    def sum_whole(self, buf: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The node's sum of every rank's whole buffer into out (not buf), with no barrier: every rank
        copies its buffer into its slot, publishes it in its copy-in counter (as `stream` does) and sums
        all of them, each peer's once its counter says it is there. Each chunk is added in the order
        the reduce-scatter gives it (`reduce_piece`: its owner's values first, then the other ranks' in
        rank order), so the bits are those of the hierarchical all-reduce's chunks. A rank rewrites this
        half of its slot two calls later, once it has finished the next call, which needs every peer
        to have begun it (its copy-in, or a fence), i.e. to have done its reads here."""
        if buf.nbytes > self.half:
            self._grow(max(buf.nbytes, 2 * self.half))
        base = self.parity * self.half
        self.parity ^= 1
        key = ("whole", buf.size, buf.dtype, base)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= 64:
                self._plans.clear()
            p = self.size
            slots = [s[base:base + buf.nbytes].view(buf.dtype) for s in self.slots]
            off = [int(x) for x in _ring.chunk_offsets(buf.size, p)]
            order = [(off[c], off[c + 1], [c] + [j for j in range(p) if j != c]) for c in range(p) if off[c + 1] > off[c]]
            plan = self._plans[key] = (slots, order)
        slots, order = plan
        slots[self.rank][...] = buf
        self.calls += 1
        tag = self.calls << 32
        self._publish(0, tag | 1)
        for j in range(self.size):
            if j != self.rank:
                _await(self, j, 0, tag | 1, None)
        for a, b, ranks in order:
            rows = [buf[a:b] if j == self.rank else slots[j][a:b] for j in ranks]
            acc = out[a:b]
            if len(rows) == 1:
                acc[...] = rows[0]
                continue
            np.add(rows[0], rows[1], out=acc)
            for row in rows[2:]:
                np.add(acc, row, out=acc)
        return out

    def _publish(self, which: int, value: int) -> None:
        """Set this rank's progress counter `which` to value, after a Win_sync that makes the data it
        announces visible first (the writer's half of the polling pattern; `_await` is the reader's)."""
        self.win.Sync()
        self.counters[self.rank][which] = value

    def stream(self, buf: np.ndarray, piece_values: int) -> "Stream":
        """Start a barrier-free reduce-scatter + copy-out of buf over the node, in pieces of at most
        piece_values of every chunk (see `Stream`). Collective over the node, like `share`."""
        if buf.nbytes > self.half:
            self._grow(max(buf.nbytes, 2 * self.half))
        base = self.parity * self.half
        self.parity ^= 1
        self.calls += 1
        key = ("stream", buf.size, buf.dtype, base, int(piece_values))
        layout = self._plans.get(key)
        if layout is None:
            if len(self._plans) >= 64:
                self._plans.clear()
            plan = self._plan(buf.size, buf.dtype, base)
            layout = self._plans[key] = Stream.layout(plan, self.size, self.rank, int(piece_values))
        return Stream(self, buf, layout, self.calls << 32)

    def _reduce_own_chunk(self, buf: np.ndarray):
        """The reduce-scatter half: every rank's buffer into its slot, then this rank's chunk summed
        over all slots into its own. Returns (this rank's slot, its reduced chunk, the chunk's start,
        every chunk's (start, stop, slot view))."""
        plan = self.share(buf)
        mine_slot, a, b, _, results = plan
        return mine_slot, self.reduce_piece(buf, plan, 0, b - a), a, results

    def allreduce(self, buf: np.ndarray, op: str = "sum", cross=None, divisor: int | None = None) -> np.ndarray:
        """All-reduce buf over the node in place. cross(chunk, start): run on this rank's reduced
        chunk (a view into its slot; start: its offset in buf) before the chunks are shared, to
        reduce it further across hosts (the hierarchical all-reduce). divisor: what 'mean'
        divides by (default: the node's rank count)."""
        if buf.size == 0:
            return buf
        _, mine, a, results = self._reduce_own_chunk(buf)
        if cross is not None:
            cross(mine, a)
        if op == "mean":
            mine /= divisor or self.size
        self._fence()
        for x, y, result in results:
            buf[x:y] = result
        return buf

    def allreduce_via_leader(self, buf: np.ndarray, op: str, cross, divisor: int) -> np.ndarray:
        """All-reduce buf over the node, with node rank 0 (the leader) running cross(buf, 0) on the
        node's whole sum in between: reduce-scatter through the slots, the leader gathers the
        chunks, reduces across hosts and writes the result to its slot, every rank copies it."""
        if buf.size == 0:
            return buf
        mine_slot, _, _, results = self._reduce_own_chunk(buf)
        self._fence()
        if self.rank == 0:
            for x, y, result in results:
                buf[x:y] = result
            cross(buf, 0)
            if op == "mean":
                buf /= divisor
            mine_slot[...] = buf
        self._fence()
        if self.rank != 0:
            buf[...] = self._leader_slot(buf)
        return buf

    def _leader_slot(self, buf: np.ndarray) -> np.ndarray:
        base = (self.parity ^ 1) * self.half  # the half this call used (parity flipped at its start)
        return self.slots[0][base:base + buf.nbytes].view(buf.dtype)


def _await(w: NodeWindow, q: int, which: int, target: int, progress) -> None:
    """Poll node rank q's progress counter `which` until it reaches target, then Win_sync (the data
    behind the counter). After _SPINS polls every further one calls progress (if any) and yields."""
    c = w.counters[q]
    spins = 0
    while c[which] < target:
        spins += 1
        if spins > _SPINS:
            if progress is not None:
                progress()
            os.sched_yield()
    w.win.Sync()


class Stream:
    """One `NodeWindow.stream` call: the reduce-scatter and copy-out of `NodeWindow.allreduce` piece
    by piece, synchronized by progress counters instead of barriers. Every chunk is cut into pieces
    (`ring.even_bounds`); round i is piece i of every chunk. Per round a rank first copies piece i of
    every other rank's chunk into its slot (`copy_in`), then sums piece i of its own chunk over the
    node once every peer has copied it (`reduce`: the bits of `reduce_piece`); once it has finished a
    piece of its chunk in its slot it publishes it (`done`, which also copies it into buf), and
    `collect` copies the peers' finished pieces into buf as they are published. A rank never waits
    inside copy_in, and a peer's piece i is published before that peer waits for anything of round
    i, so the waits form no cycle. Reuse of the slot halves, as for the fenced calls: a rank writes a
    half again two calls later, after it has collected the next call's results from every peer,
    which each publishes only after its reads of this call."""

    __slots__ = ("w", "buf", "tag", "mine", "a", "pieces", "rounds", "_layout", "_copied", "_count")

    @staticmethod
    def layout(plan, k: int, me: int, piece_values: int):
        """Per layout, once: the pieces of every chunk (offsets in the chunk), this rank's copy-in
        order (round, chunk) and, for each piece of its chunk, how many pieces each peer has copied
        in once it has copied that one (the counter value to wait for)."""
        from .ring import even_bounds

        results = plan[4]
        cut = [even_bounds(0, y - x, piece_values) for x, y, _ in results]
        rounds = max(len(c) for c in cut)
        present = [[j for j in range(k) if i < len(cut[j])] for i in range(rounds)]   # chunks with a piece i
        writes = [[(j, results[j][0] + cut[j][i][0], results[j][0] + cut[j][i][1]) for j in present[i] if j != me]
                  for i in range(rounds)]
        need = [[] for _ in cut[me]]
        for q in range(k):
            if q == me:
                continue
            done = 0  # pieces q has copied in before round i (its own chunk's are never copied)
            for i in range(len(cut[me])):
                need[i].append((q, done + sum(1 for j in present[i] if j != q and j <= me)))
                done += sum(1 for j in present[i] if j != q)
        return plan, cut, rounds, writes, need

    def __init__(self, w: NodeWindow, buf: np.ndarray, layout, tag: int):
        plan, cut, rounds, _, _ = layout
        self.w, self.buf, self.tag, self._layout = w, buf, tag, layout
        self.mine, self.a = plan[0], plan[1]
        self.pieces, self.rounds = cut[w.rank], rounds
        self._copied = [0] * w.size
        self._count = 0

    def copy_in(self, i: int) -> None:
        """Round i's copy-in: piece i of every other rank's chunk into this rank's slot, published."""
        mine, buf = self.mine, self.buf
        writes = self._layout[3][i]
        if not writes:
            return
        for _, x, y in writes:
            mine[x:y] = buf[x:y]
        self._count += len(writes)
        self.w._publish(0, self.tag | self._count)

    def reduce(self, i: int, progress=None) -> np.ndarray:
        """Piece i of this rank's chunk summed over the node into its slot (own values first, then the
        other ranks' in rank order), once every peer has copied it in; returns that view. progress:
        called while waiting (e.g. to let MPI move messages already posted)."""
        for q, n in self._layout[4][i]:
            _await(self.w, q, 0, self.tag | n, progress)
        x, y = self.pieces[i]
        return NodeWindow.reduce_piece(self.buf, self._layout[0], x, y)

    def result(self, i: int) -> np.ndarray:
        """Piece i of this rank's chunk in its slot (where `reduce` summed it), for the caller to finish."""
        x, y = self.pieces[i]
        return self.mine[self.a + x:self.a + y]

    def done(self, i: int) -> None:
        """Piece i of this rank's chunk is final in its slot: into buf, and published to the peers."""
        x, y = self.pieces[i]
        self.buf[self.a + x:self.a + y] = self.mine[self.a + x:self.a + y]
        self.w._publish(1, self.tag | (i + 1))

    def collect(self, block: bool, progress=None) -> None:
        """The peers' finished pieces into buf: those published so far, or (block) all of them."""
        w, tag, cut = self.w, self.tag, self._layout[1]
        results = self._layout[0][4]
        for q in range(w.size):
            have, total = self._copied[q], len(cut[q])
            if q == w.rank or have == total:
                continue
            if block:
                _await(w, q, 1, tag | total, progress)
                n = total
            else:
                v = int(w.counters[q][1])
                n = v & 0xFFFFFFFF if v >> 32 == tag >> 32 else 0
                if n <= have:
                    continue
                w.win.Sync()
            x0, _, res = results[q]
            for x, y in cut[q][have:n]:
                self.buf[x0 + x:x0 + y] = res[x:y]
            self._copied[q] = n


class Hierarchy:
    """A communicator's ranks as hosts: this host's shared window, and the communicators the
    hierarchical all-reduce reduces across hosts over: `slices` (the ranks with this rank's node
    rank, one per host: usable when every host runs the same number of ranks) and `leaders` (node
    rank 0 of every host; None on the other ranks)."""

    def __init__(self, comm: MPIComm, node, placement: list[tuple[int, int]]):
        from mpi4py import MPI

        self.window = NodeWindow(node)
        self.node_rank, self.node_size = node.Get_rank(), node.Get_size()
        self.hosts = sum(1 for r, _ in placement if r == 0)
        self.equal = len({size for _, size in placement}) == 1
        raw = comm.comm
        self.slices = MPIComm(raw.Split(self.node_rank, comm.rank)) if self.equal else None
        leaders = raw.Split(0 if self.node_rank == 0 else MPI.UNDEFINED, comm.rank)
        self.leaders = MPIComm(leaders) if self.node_rank == 0 else None


def host_count(comm: Communicator) -> int:
    """How many nodes comm's ranks run on (1 for a communicator that is not MPI's). Collective on a
    communicator's first call (with node_window)."""
    node_window(comm)
    return getattr(comm, "_hosts", 1)


def hierarchy(comm: Communicator) -> Hierarchy | None:
    """comm's hosts (see Hierarchy) when its ranks span several nodes and some node runs more than
    one of them, else None. Collective on a communicator's first call (with node_window)."""
    node_window(comm)
    return getattr(comm, "_hierarchy", None)


def node_window(comm: Communicator) -> NodeWindow | None:
    """The shared-memory all-reduce of comm, or None when it has none: not an MPI communicator (a
    thread world, a throttled wrapper that must see every byte), one with sleeping waits, or
    ranks on more than one node.
    The first call is collective (MPI_Comm_split_type); the answer is kept on comm, and so is the
    ranks' placement on hosts when they span several (`hierarchy`)."""
    try:
        return comm._node_window
    except AttributeError:
        pass
    window = None
    # a communicator that sleeps in its waits (a communication thread's) keeps off MPI_Barrier,
    # which spins: it takes the point-to-point algorithms (which still ask how many hosts there are)
    if type(comm) is MPIComm and comm.size > 1:
        from mpi4py import MPI
        node = comm.comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
        sleeps = bool(comm.poll_interval_s)
        if node.Get_size() == comm.size and not sleeps:
            window = NodeWindow(node)
        elif node.Get_size() == comm.size:
            node.Free()
        else:
            placement = comm.allgather((node.Get_rank(), node.Get_size()))
            comm._hosts = sum(1 for r, _ in placement if r == 0)
            if max(size for _, size in placement) > 1 and not sleeps:
                comm._hierarchy = Hierarchy(comm, node, placement)
            else:
                node.Free()
    comm._node_window = window
    return window
