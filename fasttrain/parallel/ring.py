"""Ring all-reduce (Patarasuk & Yuan 2009, "Bandwidth optimal all-reduce algorithms for clusters
of workstations"; the scheme Baidu's ring-allreduce and Horovod popularized).

n ranks, buffer split into n chunks. Reduce-scatter: in step s rank r sends chunk (r - s) to its
right neighbour and adds chunk (r - s - 1) arriving from its left; after n - 1 steps rank r holds
the full sum of chunk (r + 1). All-gather: n - 1 more steps forward the owners' reduced chunks
around the ring. Each rank sends 2 (n - 1) / n of the buffer, independent of n.

Pipelining: every chunk is cut into segments; a segment is forwarded as soon as it has been
reduced, so the ring's steps overlap (a long message would otherwise serialize receive, add and
send). Receives are posted before the matching sends and waited in order; sends from one rank to
its neighbour go out in (step, segment) order, so one tag suffices (MPI's non-overtaking rule).

Every rank ends bit-identical: a chunk is summed once, by a fixed chain of ranks, and the
all-gather copies the owner's result. With a codec the owner encodes its reduced chunk, the
all-gather forwards those bytes unchanged and every rank (owner included) decodes the same bytes.
Where the codec quantizes is the schedule: 'once' (reduce-scatter in full precision, the owner's
encode is the only one) or 'hop' (every reduce-scatter message is the sender's encoded partial
sum too, the receiver decodes and adds; error feedback after Seide et al. 2014 and Karimireddy
et al. 2019 keeps each encode's loss on its sender for the next call). Only the owner's encode
reaches the all-gather, whose bytes every rank decodes, so ranks stay bit-identical.
"""
from __future__ import annotations

import functools
import os
import queue
import threading
import time

import numpy as np

from .codecs import ErrorFeedback, get_codec
from .comm import Communicator
from .shm import hierarchy, host_count, node_window
from .watchdog import watched

DEFAULT_SEGMENT_BYTES = 1 << 19
#: below this many bytes ring_allreduce (no codec) runs recursive doubling instead of the ring:
#: log2(p) exchanges instead of 2 (p - 1) pipelined steps, the latency-optimal choice for short
#: messages (Thakur, Rabenseifner, Gropp 2005, "Optimization of collective communication
#: operations in MPICH", section 4.4). Tuned with bench/collectives.py on this machine.
DEFAULT_SMALL_BYTES = 1 << 16
#: from small_bytes up to this many bytes (no codec) the halving-doubling all-reduce runs: its
#: 2 log2(p) exchanges beat the ring's 2 (p - 1) pipelined steps (each a round of Python and MPI
#: overhead, and on an oversubscribed node a wait for the neighbour to be scheduled) until the
#: ring's pipelining of the add with the transfer pays off. Tuned with bench/collectives.py
#: (2 cores, K = 2 and 4): at 256 KB..4 MB halving-doubling was 1.5-2.5x faster than the ring.
DEFAULT_MID_BYTES = 1 << 23
#: from small_bytes up to this many bytes (no codec), when every rank is on one node, the
#: shared-memory window all-reduce (`shm.NodeWindow`) runs instead: two barriers per call, no
#: message rounds. Tuned on this machine (2 cores, each algorithm forced, interleaved with MPI's
#: Allreduce in one run): with 3 or 4 ranks it was 1.3-2.9x MPICH from 256 KB to 16 MB (halving-
#: doubling 0.8-1.3x), with 2 ranks 1.0-1.9x from 1 MB to 8 MB (halving-doubling 1.0-1.1x);
#: at 32 MB and above halving-doubling or the ring were as fast or faster.
DEFAULT_SHARED_BYTES = 1 << 25
#: from this many bytes, a flat all-reduce across hosts over a rank count that is not a power of
#: two (and not served by `direct_allreduce`: above shared_bytes or DIRECT_MAX_RANKS) takes the
#: ring instead of halving-doubling, whose extra ranks send their whole buffer to a
#: partner and get the whole result back: twice the bytes on those links. Measured on the
#: emulated cluster (bench/cluster_allreduce.py, 3 hosts x 1 rank): the ring took 0.67x of
#: halving-doubling's time at 1 MB over 1 Gbit/s links and 0.6x at 4 MB over 10 Gbit/s links.
DEFAULT_CROSS_RING_BYTES = 1 << 20
#: ranks on separate hosts (one each, no hierarchy), at most this many: below shared_bytes the
#: all-reduce goes to every peer at once (`oneshot_allreduce`, `direct_allreduce`): 1 or 2 message
#: rounds where recursive doubling, halving-doubling and the ring take 3, 4 and 2 (p - 1) for p = 3.
#: Each rank then has p - 1 messages in flight per round; measured up to 4 hosts.
DIRECT_MAX_RANKS = 4
#: across hosts, one rank each, three or more hosts: below this many bytes ring_allreduce measures
#: the candidates (MEASURED_CANDIDATES: two rounds with every peer, one round, two rounds through one
#: rank) for each power-of-two size class and keeps the fastest (`measured_choice`); from it on, the
#: same between MEASURED_LARGE_CANDIDATES (the fewest bytes on the busiest link: 2 (p - 1) / p of the
#: buffer). Which one wins below 1 MB
#: depends on the link and on how busy the cores are, not on the bytes: on a quiet machine direct beat
#: one-shot at every size on 3 hosts (bench/cluster_allreduce.py, 3 hosts x 1 rank, load 1.5-3: 64 KB
#: 0.37 vs 0.70 ms, 256 KB 0.94 vs 1.07 ms over 10 Gbit/s), at load 10-16 one-shot beat direct at
#: 64-256 KB (one round fewer to be descheduled in). The pipelined ring (MEASURED_RING) is timed beside
#: them and replaces their pick as from 1 MB (`large_pick`: faster by the margin, or a tie at the wire):
#: over 1 Gbit/s, where the call runs at the wire, its one TCP flow per link direction kept the link
#: busier than direct's two (3 hosts x 1 rank, 256 KB, 301 interleaved rounds, in the least loaded of
#: three runs, load 6-7, p20 / min ms: ring 3.07 / 2.90, in 32 KB pieces 3.02 / 2.70, MPICH's ring 3.00
#: / 2.86, direct 3.25 / 2.87; the ring's minimum below direct's in 4 of 5 such runs, 2.86-2.92 vs 2.96-3.08
#: ms). Under load direct's median was 0.82-0.87x the ring's there (the ring's 4 steps are 4 waits for a
#: core), and a measurement under load 7-8 picked the ring in 2 of 6 cells over 1 Gbit/s, costing
#: 1.11-1.16x until the next one. Every candidate adds each chunk in the ring's order (`_ring_order`), so
#: they return the same bits and the measurement never shows in a result.
MEASURED_MAX_BYTES = 1 << 20
MEASURED_CANDIDATES = ("direct", "oneshot", "rooted")
MEASURED_RING = "ring"
#: from MEASURED_MAX_BYTES up to shared_bytes, the same hosts measure these instead: `direct` and the
#: pipelined ring (`_measured_ring`: `plain_ring_allreduce` in eager pieces below EAGER_MAX_BYTES). Both move the fewest bytes (2 (p - 1) / p of the buffer
#: per link); which is faster depends on the link. On the emulated cluster (3 hosts x 1 rank, quiet)
#: over 1 Gbit/s, where both run at the wire, the ring's one TCP flow per direction took 0.98-1.0x of
#: direct's two (1 MB 12.86 vs 13.11 ms, 4 MB 50.72 vs 52.28 ms); over 10 Gbit/s, where the veth's
#: TCP is CPU-bound, direct's 2 rounds took 0.75-0.9x of the ring's 2 (p - 1) steps. Picked by
#: `large_pick` (a tie by the wire fraction, WIRE_BOUND).
MEASURED_LARGE_CANDIDATES = ("direct", "ring")
#: two hosts with the same number of ranks each, below this many bytes: ring_allreduce measures the
#: hierarchical all-reduce (two waits in the host: for the copy-in, for the results; half of the buffer
#: per rank across) against `onefence_allreduce` (one wait, the whole host sum per rank across: twice
#: the cross-host bytes). Which wins depends on what a synchronization costs against the link:
#: interleaved on the emulated cluster, 2 hosts x 2 ranks at load 9 (where a wait is for a descheduled
#: peer), with fences (before session 11) over 10 Gbit/s one took 0.75-0.85x of two at 64-128 KB
#: (medians of 201 rounds, twice), over 1 Gbit/s it lost (20th percentiles 1.2-1.35x at 64-256 KB);
#: with progress counters instead (`NodeWindow.stream`, `sum_whole`) each was within 0.84-1.1x of the
#: other in the same rounds (load 7-9, 64-128 KB).
HIER_MEASURED_MAX_BYTES = 1 << 18
HIER_MEASURED_CANDIDATES = ("hierarchical", "onefence")
#: interleaved calls of each candidate per measurement (after one warm-up round)
MEASURED_ROUNDS = 9
#: the same from MEASURED_MAX_BYTES on: a call there is milliseconds to hundreds of them (16 MB over
#: 1 Gbit/s: 0.2 s, so a measurement takes about 4.5 s there, the probes included), and its time
#: varies less from call to call than a short one's. 3 rounds were too few on a loaded machine
#: (load 8): 3 hosts over 10 Gbit/s at 16 MB picked the ring, which took 71 ms against direct's 57 ms
#: in the same job; so were 5 (bench/dev/measure_rounds.py, 3 hosts x 1 rank over 10 Gbit/s at 4 MB,
#: load 6.9-7.1, 22 measurements each: 5 rounds picked the ring twice, its score 7-9 % under direct's
#: from a low quantile of 5 samples, 9 rounds never; in the same jobs direct took 0.84-0.86x of the
#: ring's time (medians); over 1 Gbit/s both picked the ring, as they should, every time).
MEASURED_LARGE_ROUNDS = 9
#: a candidate's score: this quantile of its per-round times (each the slowest rank's). A low quantile
#: is what the call costs when no rank waits for a core; on a shared machine the median and above
#: measure which candidate happened to run while another process held the cores.
MEASURED_QUANTILE = 0.25
#: the kept pick (at first MEASURED_CANDIDATES[0], the quiet machine's winner) changes only to a
#: candidate whose score is lower by more than this fraction: two candidates within noise of each
#: other do not flip the choice from one measurement to the next.
MEASURED_MARGIN = 0.1
#: the margin from MEASURED_MAX_BYTES on: a candidate faster than the other by more than this fraction
#: of the other's score is picked; within it the two are a tie, which the wire fraction decides
#: (WIRE_BOUND). No incumbent here: the tie-breaker is a property of the link, so a tie does not flip
#: from one measurement to the next, and a wrong tie-break costs at most this margin.
MEASURED_LARGE_MARGIN = 0.05
#: a tie from MEASURED_MAX_BYTES on goes to the ring when the link is the limit: when the wire floor
#: (2 (p - 1) / p of the buffer at the link's time per byte, from the fastest of the ping-pongs between
#: ranks 0 and 1 timed in the same interleaved rounds as the candidates, `_wire_probe`) is at least this fraction of
#: the faster candidate's score; else to direct (fewer rounds: where the cores, not the link, bound
#: the call). Both move the same bytes per link; where the link is the limit the ring's single flow
#: per direction of each link kept it busier than direct's p - 1 concurrent flows (3 hosts x 1 rank
#: over 1 Gbit/s, quiet: ring 12.58 / 50.72 ms against direct 13.01 / 53.26 ms at 1 / 4 MB, within the
#: 5 % margin, so the incumbent direct was kept at 1.11-1.14x of the floor where the ring ran at
#: 1.04-1.07x). Over 10 Gbit/s, where the veth's TCP is CPU-bound, both run at 0.5-0.6 of the floor
#: and direct wins by 10-25 % anyway; over 1 Gbit/s at 0.9-0.97.
WIRE_BOUND = 0.8
#: the ping-pong of `_wire_probe` moves the ring's chunk of the buffer, at most this many bytes
WIRE_PROBE_MAX_BYTES = 1 << 20
#: below MEASURED_MAX_BYTES a probe shorter than this cannot see the link's rate: the htb shaper lets one
#: TCP burst of up to 64 KB through whole, so the ping-pong times the CPU, not the wire, and under load its
#: inflated time made ties go to the ring where it was slower (3 hosts x 1 rank over 1 Gbit/s at 64 KB,
#: probe 21 KB, load 6-7, 1001 interleaved rounds: picked the ring, p5 1.88 ms against direct's 1.30; in the
#: quiet window of the same session the ring took 1.03x direct's median). There a tie keeps the few-round
#: pick; the ring still wins when faster by MEASURED_LARGE_MARGIN.
WIRE_PROBE_MIN_BYTES = 64 << 10
#: re-measure a size class after this many calls of it, then every MEASURED_EVERY calls: the first
#: measurement runs on a job's first call (connections opening, pages faulting, ranks still
#: starting), and the machine's load changes while a job runs.
MEASURED_AGAIN_AFTER = 64
MEASURED_EVERY = 4096
#: the largest message the algorithms of hosts with one rank each (`oneshot_allreduce`,
#: `direct_allreduce`, `rooted_allreduce`) put on a link in one piece: larger buffers go in pieces of
#: at most this many bytes. The mpich wheel's TCP transport (UCX tcp) sends a message that fits its
#: 64 KB segment at once; a larger one takes a rendezvous (a request, a reply, then the data): over the
#: emulated cluster's veth a ping-pong took 21-24 us one way at 48-63 KB and 98-121 us at 64 KB over
#: 10 Gbit/s links (600 us at 64 KB over 1 Gbit/s, where 63 KB took 24 us). Pieces also let the
#: direct all-reduce sum and forward the first piece while the next ones arrive. Buffers from
#: EAGER_MAX_BYTES on go in DEFAULT_SEGMENT_BYTES pieces instead: there the handshake is paid once per
#: half megabyte, and every eager piece is one more copy on cores the veth's TCP already keeps busy
#: (bench/cluster_allreduce.py-style interleaved runs, load 7: 3 hosts x 1 rank over 1 Gbit/s, direct
#: at 64 KB / 256 KB / 1 MB took 6.7 / 8.1 / 16.0 ms in 60 KB pieces, 7.9 / 9.2 / 18.5 ms in one; at 4 MB
#: 58.5 ms against 55.3 ms; 2 hosts x 2 ranks over 10 Gbit/s at 4 MB, whose cross-host one-shot moves
#: 2 MB slices, 12.6 ms against 9.2 ms).
EAGER_BYTES = 60 << 10
EAGER_MAX_BYTES = 2 << 20
#: messages from this size take the wheel's TCP rendezvous (see EAGER_BYTES): one that arrives before
#: its receive is posted waits as a request to send instead of being buffered and copied by MPI
RENDEZVOUS_BYTES = 64 << 10
_TAG = 77
_TAG_SMALL = 78


#: the MPI waits of the cross-host algorithms (the 2-host hierarchy, direct, one-shot, rooted and the ring
#: from persistent requests) for a buffer of YIELD_MIN_BYTES or more test their request this many times, then yield the
#: core at every further test (`_waits`); None: MPI_Wait, which spins in the library. On a node with more
#: ranks than cores (the emulated cluster: 3-4 ranks and the veths' TCP on 2 cores) a rank spinning for a
#: message holds a core that the rank or the kernel work sending it needs. Interleaved on the emulated
#: cluster, 401 rounds, loaded 9-11, yielding / spinning paired medians over 10 Gbit/s: 2 hosts x 2 ranks,
#: the hierarchy, 0.95 / 0.91 at 256 KB / 1 MB (0.93-0.97 in three more jobs at 256 KB-4 MB); 3 hosts x 1
#: rank, direct 0.89 / 0.92, the ring 0.82 / 0.87; over 1 Gbit/s (at the wire) 0.97-1.04. At 64 KB the
#: hierarchy lost (1.09; a 64 KB call is a few messages, and a yielded rank comes back late for them).
#: One-shot / rooted at 256 KB (3 hosts x 1 rank, 10 Gbit/s): 0.89 / 1.01.
WAIT_SPINS = 32
YIELD_MIN_BYTES = 128 << 10


def _yield_wait(req) -> None:
    """Wait for req: WAIT_SPINS tests, then a test and a sched_yield in turn."""
    test, k = req.Test, 0
    while not test():
        k += 1
        if k > WAIT_SPINS:
            os.sched_yield()


def _yield_waitall(reqs) -> None:
    """Wait for every request of reqs as `_yield_wait` does."""
    if not reqs:
        return
    testall, k = type(reqs[0]).Testall, 0
    while not testall(reqs):
        k += 1
        if k > WAIT_SPINS:
            os.sched_yield()


def _waits(comm, nbytes: int):
    """(wait, waitall) for comm's MPI requests of a call on nbytes: comm's own where it polls with
    sleeps, MPI's where WAIT_SPINS is None or below YIELD_MIN_BYTES, else the yielding ones."""
    if getattr(comm, "poll_interval_s", None) or not hasattr(comm, "_MPI"):
        return comm.wait, comm.waitall
    if WAIT_SPINS is None or nbytes < YIELD_MIN_BYTES:
        return comm._MPI.Request.Wait, comm._MPI.Request.Waitall
    return _yield_wait, _yield_waitall


def chunk_offsets(n: int, parts: int) -> np.ndarray:
    """Boundaries of `parts` chunks of n values, as np.array_split makes them: the first n % parts
    chunks get one more value. offsets[i]:offsets[i+1] is chunk i (possibly empty)."""
    if parts < 1 or n < 0:
        raise ValueError(f"chunk_offsets(n={n}, parts={parts}): expected n >= 0 and parts >= 1")
    base, extra = divmod(n, parts)
    i = np.arange(parts + 1)
    return i * base + np.minimum(i, extra)


def segment_bounds(start: int, stop: int, seg: int) -> list[tuple[int, int]]:
    """[start, stop) cut into pieces of at most seg values (empty range -> no pieces)."""
    if seg < 1:
        raise ValueError(f"segment size: expected >= 1 value, got {seg}")
    return [(a, min(a + seg, stop)) for a in range(start, stop, seg)]


SCHEDULES = ("once", "hop")


def _check_schedule(schedule):
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")


def codec_quantum(codec) -> int:
    """Values per 'quantum' of a codec: segments that are whole multiples of it encode to exactly
    the bytes of one encode of their concatenation (no extra per-segment scale, padding nibble or
    partial sign byte), so pipelining the 'hop' schedule costs no wire bytes. lcm(block, 8): a
    block codec's scale covers `block` values; 8 values fill whole bytes at 1 and 4 bits."""
    inner = codec.codec if isinstance(codec, ErrorFeedback) else codec
    q = int(np.lcm(int(getattr(inner, "block", 1)), 8))
    for k in (1, 3):  # additivity is what the byte count of the pipeline relies on
        if codec.nbytes(2 * k * q) != 2 * codec.nbytes(k * q):
            raise ValueError(f"codec {codec.name}: nbytes is not additive over segments of {q} values "
                             f"(nbytes({2 * k * q}) = {codec.nbytes(2 * k * q)}, 2 x nbytes({k * q}) = "
                             f"{2 * codec.nbytes(k * q)}); the 'hop' schedule cannot align its segments")
    return q


def hop_segment(codec, segment_bytes: int) -> int:
    """Values per reduce-scatter segment of the 'hop' schedule: segment_bytes of float32 rounded
    down to a whole number of codec quanta (at least one)."""
    q = codec_quantum(codec)
    return max(1, int(segment_bytes) // 4 // q) * q


def wire_bytes(n: int, size: int, itemsize: int = 4, codec=None, rank: int = 0, schedule: str = "once",
               segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> int:
    """Bytes `rank` sends in a ring all-reduce of n values: in reduce-scatter every chunk but the
    one it ends up owning (rank + 1), in the all-gather every chunk but rank + 2 (encoded by the
    codec). Reduce-scatter in full precision ('once') or encoded segment by segment ('hop', so
    segment_bytes matters: each segment is encoded on its own)."""
    _check_schedule(schedule)
    if size <= 1:
        return 0
    off = chunk_offsets(n, size)
    sizes = np.diff(off)
    codec = get_codec(codec)
    ag = [int(sizes[c]) for c in range(size) if c != (rank + 2) % size]
    if codec is None:
        return itemsize * (n - int(sizes[(rank + 1) % size])) + itemsize * sum(ag)
    if schedule == "once":
        rs = itemsize * (n - int(sizes[(rank + 1) % size]))
    else:
        seg = hop_segment(codec, segment_bytes)
        rs = sum(codec.nbytes(b - a) for c in range(size) if c != (rank + 1) % size
                 for a, b in segment_bounds(int(off[c]), int(off[c + 1]), seg))
    return rs + sum(codec.nbytes(s) for s in ag)


_scratch_pool = threading.local()
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _scratch(role: str, n: int, dtype) -> np.ndarray:
    """A reusable work array of n values for `role`, one pool per thread. Fresh arrays of megabytes
    come from mmap, so every call would page-fault (and zero) its receive buffers again: at 16 MB,
    K = 2 that was a third of the all-reduce's time. Kept lean: small all-reduces are
    microseconds, and this is on their path."""
    try:
        pool = _scratch_pool.arrays
    except AttributeError:
        pool = _scratch_pool.arrays = {}
    key = (role, dtype)
    arr = pool.get(key)
    if arr is None or arr.size < n:
        arr = pool[key] = np.empty(max(n, 1), dtype)
    return arr if arr.size == n else arr[:n]


def _check_buf(buf, name="buf"):
    if not isinstance(buf, np.ndarray) or buf.ndim != 1 or not buf.flags.c_contiguous:
        raise ValueError(f"{name}: expected a contiguous 1-D NumPy array, got "
                         f"{type(buf).__name__} {getattr(buf, 'shape', '')}")
    if buf.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name}: expected float32 or float64, got {buf.dtype}")


def _exchange(comm: Communicator):
    """send/receive of one message with a peer, as one call: mpi4py's Sendrecv on an MPIComm (a
    single MPI call, no request objects), else an irecv/isend pair (ThreadComm in tests). Built
    once per communicator: small all-reduces are microseconds and this is on their path."""
    try:
        return comm._ring_sendrecv
    except AttributeError:
        pass
    raw = getattr(comm, "comm", None)
    if raw is not None and hasattr(raw, "Sendrecv") and not getattr(comm, "poll_interval_s", 0):
        def sendrecv(send, recv, peer):
            raw.Sendrecv(send, peer, _TAG_SMALL, recv, peer, _TAG_SMALL)
    else:
        def sendrecv(send, recv, peer):
            rq = comm.irecv(recv, peer, _TAG_SMALL)
            comm.wait(comm.isend(send, peer, _TAG_SMALL))
            comm.wait(rq)
    try:
        comm._ring_sendrecv = sendrecv
    except AttributeError:  # a communicator with __slots__: rebuilt per call
        pass
    return sendrecv


def recursive_doubling_allreduce(comm: Communicator, buf: np.ndarray, op: str = "sum") -> np.ndarray:
    """All-reduce buf in place by recursive doubling: in round k rank r swaps its partial sum
    with rank r ^ 2^k and both add. With p not a power of two, the p - p2 ranks above the
    largest power of two p2 first fold their data into rank r - p2 and get the result back
    (Thakur et al. 2005). Ranks end bit-identical: each round both partners compute a + b of
    the same two arrays, and IEEE addition is commutative."""
    p, r = comm.size, comm.rank
    if p == 1:
        return buf
    tmp = _scratch("tmp", buf.size, buf.dtype)
    sendrecv = _exchange(comm)
    p2 = 1 << (p.bit_length() - 1)
    if r >= p2:
        comm.wait(comm.isend(buf, r - p2, _TAG_SMALL))
        comm.wait(comm.irecv(buf, r - p2, _TAG_SMALL))
    else:
        if r < p - p2:
            comm.wait(comm.irecv(tmp, r + p2, _TAG_SMALL))
            np.add(buf, tmp, out=buf)
        mask = 1
        while mask < p2:
            sendrecv(buf, tmp, r ^ mask)
            np.add(buf, tmp, out=buf)
            mask <<= 1
        if op == "mean":
            buf /= p
        if r < p - p2:
            comm.wait(comm.isend(buf, r + p2, _TAG_SMALL))
    return buf


def halving_doubling_allreduce(comm: Communicator, buf: np.ndarray, op: str = "sum") -> np.ndarray:
    """All-reduce buf in place by recursive halving (reduce-scatter) then recursive doubling
    (all-gather), Rabenseifner's algorithm (Thakur, Rabenseifner, Gropp 2005, section 4.4): in
    round k rank r swaps half of its current range with rank r ^ 2^k and adds the half it keeps,
    so each rank sends 2 (p2 - 1) / p2 of the buffer in 2 log2(p2) messages, against 2 (p - 1)
    for the ring. p not a power of two: the ranks above p2 fold in first and get the result
    back, as in `recursive_doubling_allreduce`. For p = 2 this is the ring with no pipeline: one
    exchange of halves, one add, one exchange of the sums. Ranks end bit-identical: every value
    of the result is summed by one rank and copied to the others."""
    p, r = comm.size, comm.rank
    if p == 1:
        return buf
    sendrecv = _exchange(comm)
    p2 = 1 << (p.bit_length() - 1)
    if r >= p2:
        comm.wait(comm.isend(buf, r - p2, _TAG_SMALL))
        comm.wait(comm.irecv(buf, r - p2, _TAG_SMALL))
        return buf
    tmp = _scratch("tmp", buf.size - buf.size // 2, buf.dtype)
    if r < p - p2:
        t = _scratch("fold", buf.size, buf.dtype)
        comm.wait(comm.irecv(t, r + p2, _TAG_SMALL))
        np.add(buf, t, out=buf)
    lo, hi = 0, buf.size
    ranges = []
    mask = p2 >> 1
    while mask:  # halving: the lower rank of a pair keeps the lower half
        mid = lo + (hi - lo) // 2
        keep, give = ((lo, mid), (mid, hi)) if r & mask == 0 else ((mid, hi), (lo, mid))
        ka, kb = keep
        t = tmp[:kb - ka]
        sendrecv(buf[give[0]:give[1]], t, r ^ mask)
        np.add(buf[ka:kb], t, out=buf[ka:kb])
        ranges.append((give, keep))
        lo, hi = keep
        mask >>= 1
    if op == "mean":
        buf[lo:hi] /= p  # by the owner only, then copied: ranks stay bit-identical
    mask = 1
    for give, keep in reversed(ranges):  # doubling: send what was kept, receive what was given
        sendrecv(buf[keep[0]:keep[1]], buf[give[0]:give[1]], r ^ mask)
        mask <<= 1
    if r < p - p2:
        comm.wait(comm.isend(buf, r + p2, _TAG_SMALL))
    return buf


_TAG_RS = 79
_TAG_AG = 80
_TAG_PROBE = 81


def piece_bytes_for(nbytes: int, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> int:
    """The largest message the algorithms of hosts with one rank each send for a buffer of nbytes:
    EAGER_BYTES below EAGER_MAX_BYTES, else segment_bytes (never more than segment_bytes)."""
    return min(int(segment_bytes), EAGER_BYTES) if nbytes < EAGER_MAX_BYTES else int(segment_bytes)


def even_bounds(start: int, stop: int, most: int) -> list[tuple[int, int]]:
    """[start, stop) cut into the fewest pieces of at most `most` values, of equal length (the
    first ones one longer where it does not divide): 64 KB in pieces of at most 60 KB is two of
    32 KB, not 60 + 4, so no piece waits behind a full-size one. Empty range -> no pieces."""
    if most < 1:
        raise ValueError(f"piece size: expected >= 1 value, got {most}")
    k = -(-(stop - start) // most)
    base, extra = divmod(stop - start, max(k, 1))
    bounds, a = [], start
    for i in range(k):
        b = a + base + (i < extra)
        bounds.append((a, b))
        a = b
    return bounds


def _pieces(n: int, itemsize: int, piece_bytes: int | None) -> list[tuple[int, int]]:
    """[0, n) in even pieces of at most piece_bytes (None: `piece_bytes_for`), at least one value each."""
    if piece_bytes is None:
        piece_bytes = piece_bytes_for(n * itemsize)
    return even_bounds(0, n, max(1, int(piece_bytes) // itemsize))


@functools.lru_cache(maxsize=256)
def _direct_plan(n: int, p: int, r: int, seg: int):
    """What `direct_allreduce` of n values on rank r of p posts, as plain ints (computed per call
    with NumPy it took 19 us of the ~40 us a 64 KB call on 3 ranks spends outside its waits): chunk
    boundaries, the (even) segments of the own chunk, the (peer, segments of its chunk) pairs."""
    off = tuple(int(v) for v in chunk_offsets(n, p))
    peers = tuple((j, tuple(even_bounds(off[j], off[j + 1], seg))) for j in _peers(p, r))
    return off, tuple(even_bounds(off[r], off[r + 1], seg)), peers, max(off[c + 1] - off[c] for c in range(p))


def _peers(p: int, r: int) -> list[int]:
    """The other ranks from r + 1 on, wrapping: each rank starts with a different peer, so the
    first messages of a call spread over every link instead of all heading for rank 0."""
    return [(r + k) % p for k in range(1, p)]


def _sum_in_rank_order(row, p: int, r: int, tmp: np.ndarray) -> None:
    """row(r) += every other row(j), added as ((row(0) + row(1)) + row(2)) + ... (`_sum_in_order`)."""
    _sum_in_order(row, range(p), r, tmp)


def _ring_order(c: int, p: int) -> list[int]:
    """The ranks in the order the pipelined ring adds chunk c: c's values first, then c + 1's, ...
    (the ring's step s adds rank c + s's values to the partial sum it received)."""
    return [(c + k) % p for k in range(p)]


def _sum_in_order(row, order, r: int, tmp: np.ndarray) -> None:
    """row(r) += every other row(j), added as ((row(o0) + row(o1)) + row(o2)) + ... over order (every
    rank once). `oneshot_allreduce`, `direct_allreduce` and `rooted_allreduce` add each chunk c in
    `_ring_order(c)`, the pipelined ring's, so whichever of them runs every value comes out with the
    same bits (IEEE addition is commutative: the ring's x_(c+1) + x_c is x_c + x_(c+1)). row(j): rank j's
    values (asked for in `order`, so a caller can wait for each peer's message just before its
    values are added); tmp: scratch of the same length, for when r is not among the first two."""
    order = list(order)
    mine = row(r)
    acc = mine if r in order[:2] else tmp
    np.add(row(order[0]), row(order[1]), out=acc)
    for j in order[2:]:
        if j == r:
            np.add(acc, mine, out=mine)
            acc = mine
        else:
            np.add(acc, row(j), out=acc)


def oneshot_allreduce(comm: Communicator, buf: np.ndarray, op: str = "sum",
                      piece_bytes: int | None = None) -> np.ndarray:
    """All-reduce buf in place in one round: every rank sends its whole buffer to every other and
    sums all p buffers itself, each chunk in the ring's order (`_sum_in_order`). (p - 1) n values out per rank, but a single message
    round: for short buffers over a few hosts the round (a peer's turn on a loaded core, a
    network round trip) is what costs, not the bytes. For p = 2 this is recursive doubling.
    Messages go in pieces of at most piece_bytes (None: `piece_bytes_for`, see EAGER_BYTES).
    Ranks end bit-identical: every rank adds the same p arrays in the same order."""
    p, r = comm.size, comm.rank
    if p == 1 or buf.size == 0:
        return buf
    others = _scratch("oneshot", (p - 1) * buf.size, buf.dtype).reshape(p - 1, buf.size)
    slot = {j: others[k] for k, j in enumerate(j for j in range(p) if j != r)}
    pieces = _pieces(buf.size, buf.itemsize, piece_bytes)
    recvs = [comm.irecv(slot[j][x:y], j, _TAG_RS) for j in _peers(p, r) for x, y in pieces]
    sends = [comm.isend(buf[x:y], j, _TAG_RS) for x, y in pieces for j in _peers(p, r)]
    waitall = _waits(comm, buf.nbytes)[1]
    waitall(recvs)
    waitall(sends)  # buf is overwritten by the sum below
    off = _direct_plan(buf.size, p, r, buf.size)[0]
    tmp = _scratch("oneshot_acc", off[1] - off[0], buf.dtype)
    for c in range(p):  # each chunk in the ring's order: the bits of every candidate (`_sum_in_order`)
        a, b = off[c], off[c + 1]
        if b > a:
            _sum_in_order(lambda j, a=a, b=b: (buf if j == r else slot[j])[a:b], _ring_order(c, p), r, tmp[:b - a])
    if op == "mean":
        buf /= p
    return buf


def rooted_allreduce(comm: Communicator, buf: np.ndarray, op: str = "sum",
                     piece_bytes: int | None = None) -> np.ndarray:
    """All-reduce buf in place through rank 0: every other rank sends its buffer to rank 0, which
    sums the p buffers (each chunk in the ring's order) and sends the sum back. 2 rounds and 2 (p - 1) messages (direct:
    2 rounds, 2 p (p - 1) messages; one-shot: 1 round, p (p - 1) messages of the whole buffer), the
    same 2 (p - 1) n values in all as direct, but rank 0 moves (p - 1) n of them each way: for short
    buffers, where a message costs more than its bytes. Messages go in pieces of at most
    piece_bytes (None: `piece_bytes_for`, see EAGER_BYTES). Ranks end bit-identical (the sum is
    rank 0's, copied), and equal to one-shot's and direct's bits (the same order of additions)."""
    p, r = comm.size, comm.rank
    if p == 1 or buf.size == 0:
        return buf
    pieces = _pieces(buf.size, buf.itemsize, piece_bytes)
    waitall = _waits(comm, buf.nbytes)[1]
    if r != 0:
        waitall([comm.isend(buf[x:y], 0, _TAG_RS) for x, y in pieces])
        waitall([comm.irecv(buf[x:y], 0, _TAG_AG) for x, y in pieces])
        return buf
    others = _scratch("oneshot", (p - 1) * buf.size, buf.dtype).reshape(p - 1, buf.size)
    recvs = [[comm.irecv(others[j - 1][x:y], j, _TAG_RS) for x, y in pieces] for j in range(1, p)]
    off = _direct_plan(buf.size, p, 0, buf.size)[0]
    tmp = _scratch("rooted_acc", off[1] - off[0], buf.dtype)

    arrived = [True] + [False] * (p - 1)

    def row(j):
        if not arrived[j]:  # rank j's message, waited for when its values are first added
            waitall(recvs[j - 1])
            arrived[j] = True
        return buf if j == 0 else others[j - 1]

    for c in range(p):  # each chunk in the ring's order: the bits of every candidate (`_sum_in_order`)
        a, b = off[c], off[c + 1]
        if b > a:
            _sum_in_order(lambda j, a=a, b=b: row(j)[a:b], _ring_order(c, p), 0, tmp[:b - a])
    if op == "mean":
        buf /= p
    waitall([comm.isend(buf[x:y], j, _TAG_AG) for j in range(1, p) for x, y in pieces])
    return buf


def direct_allreduce(comm: Communicator, buf: np.ndarray, op: str = "sum",
                     segment_bytes: int | None = None, order: str | None = None) -> np.ndarray:
    """All-reduce buf in place by a reduce-scatter and an all-gather with every peer at once:
    rank r owns chunk r; it sends chunk j to rank j and receives its own chunk from every peer
    (all messages in flight together), sums it, and sends the sum to every peer. Each rank moves
    2 (p - 1) / p of the buffer, as in the ring, but in 2 rounds instead of 2 (p - 1): with a few
    ranks on separate hosts (each with its own link, full duplex) the p - 1 messages of a round
    share nothing but the sender's link. Pipelined in segments (None: `piece_bytes_for`, see
    EAGER_BYTES): a segment of the own chunk is summed and sent on while the next ones arrive. The
    all-gather lands in buf where its messages take the rendezvous (each segment's receive posted
    once the reduce-scatter send of those values from buf has completed), else in a scratch buffer
    copied in at the end (buf's chunks may still be on their way out). Ranks end bit-identical: each chunk is summed by its owner and copied to
    the others. order: how the owner adds a chunk's p values: 'ring' (from the owner's own values on,
    x_r + x_(r+1) + ...: the association of `plain_ring_allreduce`'s chain for that chunk, and of
    one-shot's and rooted's sums, so all of `measured_candidates` return the same bits) or 'rank'
    (((x0 + x1) + x2) + ...); None: 'ring'. Over MPI below PERSISTENT_MAX_BYTES, in eager pieces and
    order 'ring', it runs from persistent requests kept per buffer (`_persistent_direct`)."""
    p, r = comm.size, comm.rank
    if order is None:
        order = "ring"
    if order not in ("rank", "ring"):
        raise ValueError(f"order: expected 'rank' or 'ring', got {order!r}")
    if p == 1 or buf.size == 0:
        return buf
    if segment_bytes is None:
        segment_bytes = piece_bytes_for(buf.nbytes)
    off, mine, peers, maxc = _direct_plan(buf.size, p, r, max(1, int(segment_bytes) // buf.itemsize))
    a = off[r]
    inbox = _scratch("direct_rs", p * maxc, buf.dtype).reshape(p, maxc)     # row j: rank j's copy of my chunk
    tmp = _scratch("direct_acc", mine[0][1] - mine[0][0] if mine else 1, buf.dtype)
    # the all-gather straight into buf where its messages take the rendezvous: a segment's receive is
    # posted once this rank's reduce-scatter send of the same values (from buf) has completed, in order
    # per peer (one peer's messages of one tag match the receives in the order posted); a message that
    # comes first waits as a request to send, not as data. Eager messages would be buffered and copied
    # by MPI instead, so below that size they land in a scratch buffer copied in at the end.
    inplace = int(segment_bytes) >= RENDEZVOUS_BYTES and hasattr(comm, "_MPI")
    if not inplace and order == "ring" and buf.nbytes < PERSISTENT_MAX_BYTES and hasattr(comm, "_MPI"):
        return _persistent_direct(comm, buf, op, max(1, int(segment_bytes) // buf.itemsize))
    if inplace:
        ag_recvs, gather = [], None
        rs_recvs = {j: [comm.irecv(inbox[j, x - a:y - a], j, _TAG_RS) for x, y in mine] for j, _ in peers}
        queued = [[(comm.isend(buf[x:y], j, _TAG_RS), j, x, y) for x, y in segs] for j, segs in peers]
        sends = []
    else:
        gather = _scratch("direct_ag", buf.size, buf.dtype)                  # chunk j of the result, from rank j
        ag_recvs = [comm.irecv(gather[x:y], j, _TAG_AG) for j, segs in peers for x, y in segs]
        rs_recvs = {j: [comm.irecv(inbox[j, x - a:y - a], j, _TAG_RS) for x, y in mine] for j, _ in peers}
        sends = [comm.isend(buf[x:y], j, _TAG_RS) for j, segs in peers for x, y in segs]

    def post_ready(block: bool) -> None:
        for q in queued:
            while q and (block or q[0][0].Test()):
                rq, j, x, y = q.pop(0)
                if block:
                    comm.wait(rq)
                ag_recvs.append(comm.irecv(buf[x:y], j, _TAG_AG))

    for i, (x, y) in enumerate(mine):
        def row(j, i=i, x=x, y=y):
            if j == r:
                return buf[x:y]
            comm.wait(rs_recvs[j][i])
            return inbox[j, x - a:y - a]

        acc = buf[x:y]
        if order == "rank":
            _sum_in_rank_order(row, p, r, tmp[:y - x])
        else:
            for j in _peers(p, r):
                np.add(acc, row(j), out=acc)
        if op == "mean":
            acc /= p
        sends += [comm.isend(acc, j, _TAG_AG) for j, _ in peers]
        if inplace:
            post_ready(False)
    if inplace:
        post_ready(True)
    comm.waitall(ag_recvs)
    comm.waitall(sends)
    if not inplace:
        for j, _ in peers:
            x, y = off[j], off[j + 1]
            buf[x:y] = gather[x:y]
    return buf


def _chunk(off: np.ndarray, c: int) -> tuple[int, int]:
    p = off.size - 1
    return int(off[c % p]), int(off[c % p + 1])


def _encode(codec, x, out, rng, at: int) -> None:
    """Encode x into out; an ErrorFeedback adds and keeps the residual of values at..at+x.size."""
    if isinstance(codec, ErrorFeedback):
        codec.encode(x, out, rng, offset=at)
    else:
        codec.encode(x, out, rng)


class AllreduceMismatch(ValueError):
    """Ranks called ring_allreduce with different sizes, dtypes, ops, codecs or algorithm choices."""


_LAYOUT_FIELDS = ("values", "dtype", "op", "codec", "schedule", "segment_bytes", "small_bytes", "shared_bytes",
                  "mid_bytes")


def verify_layout(comm: Communicator, layout: tuple) -> None:
    """Raise AllreduceMismatch on every rank when the ranks' `layout` (one all-reduce's arguments)
    differ. Collective on the first call for each layout only (one tiny allgather), cached on
    comm afterwards: without it mismatched sizes return silently wrong values from the shared
    window, and mismatched algorithms or segment sizes hang or fail on one rank only. (A rank
    calling with a layout it has used before while a peer calls a new one is not caught here:
    the data-parallel layer's fingerprint and watchdog cover that.)"""
    try:
        seen = comm._ring_layouts
    except AttributeError:
        seen = set()
        try:
            comm._ring_layouts = seen
        except AttributeError:  # a communicator with __slots__: verified every call
            pass
    if layout in seen:
        return
    layouts = comm.allgather(layout)
    if any(lay != layouts[0] for lay in layouts):
        differ = [i for i, f in enumerate(_LAYOUT_FIELDS) if len({lay[i] for lay in layouts}) > 1]
        per_rank = "; ".join(f"rank {r}: " + ", ".join(f"{_LAYOUT_FIELDS[i]}={lay[i]!r}" for i in differ)
                             for r, lay in enumerate(layouts))
        raise AllreduceMismatch(f"ring_allreduce: the ranks' calls differ ({per_rank}); expected the same "
                                f"{', '.join(_LAYOUT_FIELDS[i] for i in differ)} on every rank")
    seen.add(layout)


def plain_ring_allreduce(comm: Communicator, buf: np.ndarray, op: str = "sum",
                         segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> np.ndarray:
    """The pipelined ring of `ring_allreduce` in full precision (its 'ring' algorithm), with no
    dispatch: the reduce-scatter, the owner's 'mean' division, the all-gather. Over MPI below
    PERSISTENT_MAX_BYTES it runs from persistent requests kept per buffer (`_persistent_ring`)."""
    p = comm.size
    if p == 1:
        return buf
    if buf.nbytes < PERSISTENT_MAX_BYTES and hasattr(comm, "_MPI") and buf.size:
        return _persistent_ring(comm, buf, op, max(1, int(segment_bytes) // buf.itemsize))
    off = chunk_offsets(buf.size, p)
    seg = max(1, int(segment_bytes) // buf.itemsize)
    _reduce_scatter(comm, buf, off, seg)
    oa, ob = _chunk(off, comm.rank + 1)
    if op == "mean":
        buf[oa:ob] /= p  # by the owner only, then copied: ranks stay bit-identical
    _allgather(comm, buf, off, seg)
    return buf


#: below this many bytes the ring over MPI (`plain_ring_allreduce`) runs from persistent requests
#: (MPI_Send_init / MPI_Recv_init, MPI-3.1 section 3.9) built once per buffer, its pieces' views
#: made once (`_RingPlan`): a call then only starts, waits and adds, where the plain form computes the
#: chunk boundaries and pieces with NumPy, slices views and builds a request per piece on every call,
#: all on the steps' critical path (a ring of p ranks has 2 (p - 1) steps in a row). Interleaved on the
#: emulated cluster, 3 hosts x 1 rank over 1 Gbit/s, 301 rounds (bench/dev/net_ab.py 'ring' against
#: 'ringold', the per-call form, in ring_allreduce's pieces; loaded 10-11), median / p5 ms: 64 KB 5.62 /
#: 2.62 vs 7.09 / 3.83, 256 KB 8.21 / 5.20 vs 9.60 / 6.68, 1 MB 16.86 / 13.57 vs 16.90 / 14.43; the
#: prototype ('perse' against 'ring' at load 6) 256 KB paired 0.95, p5 2.73 vs 2.90 ms. From 2 MB the
#: pieces are half a megabyte (`piece_bytes_for`) and the per-call Python is noise. The same for
#: direct_allreduce's eager form (`_persistent_direct`, 4 (p - 1) requests per own piece per call): 3
#: hosts x 1 rank over 10 Gbit/s, 401 interleaved rounds, loaded 9-10, per-call / persistent paired
#: 1.07 at 1 MB (p5 3.35 vs 3.10 ms), 1.05 at 256 KB, 1.00 at 64 KB.
PERSISTENT_MAX_BYTES = EAGER_MAX_BYTES
#: persistent plans kept per communicator (least recently used dropped, its requests freed): the
#: data-parallel layer all-reduces a few fixed buckets of the gradient arena
PERSISTENT_PLANS = 16


class _RingPlan:
    """`plain_ring_allreduce`'s messages for one buffer as persistent requests. Chunk c is cut into
    the same even pieces (`even_bounds`) by every rank, so a step's received pieces are the next
    step's sent ones. Reduce-scatter step s receives into row s % 2 of its own scratch (never the
    shared scratch pool: the requests hold addresses). The plan keeps the buffer alive, so its
    address cannot be reused by another array while the requests point at it."""

    def __init__(self, comm, buf: np.ndarray, seg: int):
        raw, p, r = comm.comm, comm.size, comm.rank
        right, left = (r + 1) % p, (r - 1) % p
        off = [int(v) for v in chunk_offsets(buf.size, p)]

        def cut(c):
            a, b = off[c % p], off[c % p + 1]
            return even_bounds(a, b, seg)

        self.buf = buf
        self.tmp = np.empty((2, max(1, max(off[c + 1] - off[c] for c in range(p)))), buf.dtype)
        self.rs = []  # step s: (sends, [(recv, partial sum in buf, received piece)])
        for s in range(p - 1):
            a = off[(r - s - 1) % p]
            row = self.tmp[s % 2]
            self.rs.append(([raw.Send_init(buf[x:y], right, _TAG) for x, y in cut(r - s)],
                            [(raw.Recv_init(row[x - a:y - a], left, _TAG), buf[x:y], row[x - a:y - a])
                             for x, y in cut(r - s - 1)]))
        self.rs_recvs = [[q for q, _, _ in recvs] for _, recvs in self.rs]
        self.rs_sends = [q for sends, _ in self.rs for q in sends]
        self.ag = [([raw.Send_init(buf[x:y], right, _TAG_AG) for x, y in cut(r + 1 - s)],
                    [raw.Recv_init(buf[x:y], left, _TAG_AG) for x, y in cut(r - s)]) for s in range(p - 1)]
        self.ag_recvs = [q for _, recvs in self.ag for q in recvs]
        self.ag_sends = [q for sends, _ in self.ag for q in sends]
        self.owned = buf[off[(r + 1) % p]:off[(r + 1) % p + 1]]

    def free(self) -> None:
        for q in self.rs_sends + self.ag_sends + self.ag_recvs + [q for qs in self.rs_recvs for q in qs]:
            q.Free()


def _kept_plan(comm, key: tuple, make):
    """comm's persistent plan for key (made by make() on first use), the most recently used kept last;
    beyond PERSISTENT_PLANS the least recently used is dropped and its requests freed."""
    try:
        plans = comm._ring_persistent
    except AttributeError:
        plans = comm._ring_persistent = {}
        _free_at_exit(comm)
    plan = plans.pop(key, None)
    if plan is None:
        if len(plans) >= PERSISTENT_PLANS:
            plans.pop(next(iter(plans))).free()
        plan = make()
    plans[key] = plan
    return plan


def _persistent_ring(comm, buf: np.ndarray, op: str, seg: int) -> np.ndarray:
    """`plain_ring_allreduce` from buf's `_RingPlan` (made on the first call for buf's address, size,
    dtype and pieces): the same messages, pieces and additions as `_reduce_scatter` + `_allgather`,
    so the same bits. The all-gather's receives (into buf) start once the reduce-scatter's sends are
    done (a receive must not land in a region a pending send still reads)."""
    plan = _kept_plan(comm, (buf.ctypes.data, buf.size, buf.dtype.str, seg), lambda: _RingPlan(comm, buf, seg))
    startall = comm._MPI.Prequest.Startall
    wait, waitall = _waits(comm, buf.nbytes)
    add = np.add
    rs, rs_recvs = plan.rs, plan.rs_recvs
    steps = len(rs)
    startall(rs_recvs[0])
    if steps > 1:
        startall(rs_recvs[1])
    startall(rs[0][0])
    for s in range(steps):
        nxt = rs[s + 1][0] if s + 1 < steps else None
        for i, (q, acc, piece) in enumerate(rs[s][1]):
            wait(q)
            add(acc, piece, out=acc)
            if nxt is not None:
                nxt[i].Start()
        if s + 2 < steps:  # row s % 2 is free again
            startall(rs_recvs[s + 2])
    if op == "mean":
        plan.owned /= comm.size  # by the owner only, then copied: ranks stay bit-identical
    waitall(plan.rs_sends)
    ag = plan.ag
    startall(plan.ag_recvs)
    startall(ag[0][0])
    for s in range(steps):
        nxt = ag[s + 1][0] if s + 1 < steps else None
        for i, q in enumerate(ag[s][1]):
            wait(q)
            if nxt is not None:
                nxt[i].Start()
    waitall(plan.ag_sends)
    return buf


class _DirectPlan:
    """`direct_allreduce`'s messages for one buffer (its eager form: the all-gather through scratch)
    as persistent requests, every view made once. Its own receive buffers (never the shared scratch
    pool: the requests hold addresses); the plan keeps buf alive, so its address is not reused."""

    def __init__(self, comm, buf: np.ndarray, seg: int):
        raw, p, r = comm.comm, comm.size, comm.rank
        off, mine, peers, maxc = _direct_plan(buf.size, p, r, seg)
        a = off[r]
        self.buf = buf
        self.inbox = np.empty((p, maxc), buf.dtype)   # row j: rank j's copy of this rank's chunk
        self.gather = np.empty(buf.size, buf.dtype)   # chunk j of the result, from rank j
        order = _peers(p, r)
        rs_recv = {j: [raw.Recv_init(self.inbox[j, x - a:y - a], j, _TAG_RS) for x, y in mine] for j in order}
        # one Startall: the receives first (no message arrives unexpected), then the reduce-scatter sends
        self.starts = [q for j in order for q in rs_recv[j]]
        self.starts += [raw.Recv_init(self.gather[x:y], j, _TAG_AG) for j, segs in peers for x, y in segs]
        self.starts += [raw.Send_init(buf[x:y], j, _TAG_RS) for j, segs in peers for x, y in segs]
        # per own piece: the peers' receives (in the order added), the sum in buf, its rows, its all-gather sends
        self.steps = [([rs_recv[j][i] for j in order], buf[x:y], [self.inbox[j, x - a:y - a] for j in order],
                       [raw.Send_init(buf[x:y], j, _TAG_AG) for j, _ in peers]) for i, (x, y) in enumerate(mine)]
        self.ag_sends = [q for st in self.steps for q in st[3]]
        self.copies = [(buf[off[j]:off[j + 1]], self.gather[off[j]:off[j + 1]]) for j, _ in peers]

    def free(self) -> None:
        for q in self.starts + self.ag_sends:
            q.Free()


def _persistent_direct(comm, buf: np.ndarray, op: str, seg: int) -> np.ndarray:
    """`direct_allreduce` (eager pieces, order 'ring') from buf's `_DirectPlan`: every receive and the
    reduce-scatter sends start at once; per own piece, wait for each peer's copy and add it in the
    ring's order (`_peers`: the same additions as the per-call form, so the same bits), then start
    its all-gather sends; the peers' chunks are copied in from scratch at the end. The per-call form
    builds 4 (p - 1) requests per piece and their views on every call (3 hosts x 1 rank, 1 MB: 48)."""
    plan = _kept_plan(comm, ("direct", buf.ctypes.data, buf.size, buf.dtype.str, seg),
                      lambda: _DirectPlan(comm, buf, seg))
    startall = comm._MPI.Prequest.Startall
    wait, waitall = _waits(comm, buf.nbytes)
    add, p = np.add, comm.size
    startall(plan.starts)
    for recvs, acc, rows, sends in plan.steps:
        for q, row in zip(recvs, rows):
            wait(q)
            add(acc, row, out=acc)
        if op == "mean":
            acc /= p  # by the owner only, then copied: ranks stay bit-identical
        startall(sends)
    waitall(plan.starts)
    waitall(plan.ag_sends)
    for dst, src in plan.copies:
        dst[...] = src
    return buf


def _free_at_exit(comm) -> None:
    """Free comm's persistent plans before MPI_Finalize (mpi4py's own exit hook, registered when
    mpi4py was imported, runs after this later one): MPICH warns about every request it frees there."""
    import atexit
    import weakref

    ref = weakref.ref(comm)

    def free():
        c = ref()
        if c is None or c._MPI.Is_finalized():
            return
        for plan in c.__dict__.pop("_ring_persistent", {}).values():
            plan.free()

    atexit.register(free)


def _measured_ring(comm: Communicator, buf: np.ndarray, op: str = "sum",
                   segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> np.ndarray:
    """The ring as `measured_choice` times and runs it (hosts of one rank each, from
    MEASURED_MAX_BYTES): `plain_ring_allreduce` in pieces of `piece_bytes_for` (below EAGER_MAX_BYTES
    eager pieces as direct's, not one rendezvous per step: interleaved on the emulated cluster, 3 hosts
    x 1 rank at 1 MB, loaded, median / p20 ms, pieces vs 512 KB segments: over 1 Gbit/s 15.49 / 13.82
    vs 16.47 / 14.82 and 16.01 / 14.75 vs 18.80 / 16.47, over 10 Gbit/s 4.85 / 2.96 vs 5.64 / 3.51 and
    8.32 / 7.09 vs 8.38 / 7.20). The same bits: the ring's additions do not depend on its segments."""
    return plain_ring_allreduce(comm, buf, op, piece_bytes_for(buf.nbytes, segment_bytes))


_MEASURED_FNS = {"direct": direct_allreduce, "oneshot": oneshot_allreduce, "rooted": rooted_allreduce,
                 "ring": _measured_ring, "hierarchical": lambda c, x: hierarchical_allreduce(c, x),
                 "onefence": lambda c, x: onefence_allreduce(c, x)}


def _measured_state(comm: Communicator) -> tuple[dict, dict]:
    """comm's kept picks and call counts per size class (fresh dicts, measured every call, for a
    communicator with __slots__)."""
    try:
        return comm._ring_measured, comm._ring_measured_calls
    except AttributeError:
        pass
    picks = getattr(comm, "_ring_measured", {})
    try:
        comm._ring_measured, comm._ring_measured_calls = picks, {}
    except AttributeError:
        return {}, {}
    return comm._ring_measured, comm._ring_measured_calls


def _scores(times: list[dict], names, quantile: float) -> dict:
    """Each candidate's score: the `quantile` of its per-round slowest-rank times."""
    rounds = min(len(t[c]) for t in times for c in names)
    if rounds < 1:
        raise ValueError(f"measured_pick: expected at least one round per candidate, got {rounds}")
    return {c: float(np.quantile([max(t[c][i] for t in times) for i in range(rounds)], quantile)) for c in names}


def measured_pick(times: list[dict], incumbent: str | None = None, names=MEASURED_CANDIDATES,
                  quantile: float = MEASURED_QUANTILE, margin: float = MEASURED_MARGIN) -> tuple[str, dict]:
    """The candidate to keep from every rank's timings (times[rank][name]: that rank's seconds per
    round, the rounds interleaved) and each candidate's score: the `quantile` of the per-round
    slowest-rank times. The incumbent (None: names[0]) stays unless another scores lower by more
    than `margin` of its score; then the lowest score wins (ties: the earlier name)."""
    scores = _scores(times, names, quantile)
    incumbent = names[0] if incumbent is None else incumbent
    best = min(names, key=lambda c: (scores[c], names.index(c)))
    keep = incumbent if scores[best] >= scores[incumbent] * (1 - margin) else best
    return keep, scores


def large_pick(times: list[dict], floor_s: float, names=MEASURED_LARGE_CANDIDATES, quantile: float = MEASURED_QUANTILE,
               margin: float = MEASURED_LARGE_MARGIN, wire_bound: float = WIRE_BOUND) -> tuple[str, dict]:
    """The pick between names = (direct-like, ring-like) from every rank's timings (as `measured_pick`
    scores them) and floor_s, the wire floor of the call (seconds): the faster one when its score
    is lower than the other's by more than `margin` of it; else (a tie) names[1] when the link is
    the limit (floor_s / the faster score >= wire_bound), names[0] when it is not. The scores come
    back with 'floor' added."""
    if len(names) != 2:
        raise ValueError(f"large_pick: expected two candidates (direct-like, ring-like), got {names!r}")
    if not floor_s >= 0:
        raise ValueError(f"large_pick: expected a wire floor >= 0 s, got {floor_s!r}")
    scores = _scores(times, names, quantile)
    fast, slow = sorted(names, key=lambda c: (scores[c], names.index(c)))
    if scores[fast] < scores[slow] * (1 - margin):
        pick = fast
    else:
        pick = names[1] if floor_s >= wire_bound * scores[fast] else names[0]
    return pick, {**scores, "floor": float(floor_s)}


def _wire_probe(comm: Communicator, x: np.ndarray) -> None:
    """One ping-pong of x between ranks 0 and 1 (on different hosts where `measured_choice` runs the
    large candidates: one rank per host); the other ranks return at once."""
    if comm.rank == 0:
        comm.wait(comm.isend(x, 1, _TAG_PROBE))
        comm.wait(comm.irecv(x, 1, _TAG_PROBE))
    elif comm.rank == 1:
        comm.wait(comm.irecv(x, 0, _TAG_PROBE))
        comm.wait(comm.isend(x, 0, _TAG_PROBE))


def measured_candidates(nbytes: int, hierarchical: bool = False) -> tuple[str, ...]:
    """The algorithms `measured_choice` times for a buffer of nbytes (hierarchical: over hosts with
    several ranks each, else over hosts of one rank each)."""
    if hierarchical:
        return HIER_MEASURED_CANDIDATES
    return MEASURED_CANDIDATES + (MEASURED_RING,) if nbytes < MEASURED_MAX_BYTES else MEASURED_LARGE_CANDIDATES


def _measures_one_rank_hosts(comm: Communicator, nbytes: int, shared_bytes: int) -> bool:
    """Whether `allreduce_algorithm` picks for this call among measured candidates on hosts of one rank
    each (at most DIRECT_MAX_RANKS of them, below shared_bytes): the ring it then runs is
    `_measured_ring`, the one `measured_choice` timed."""
    return nbytes < shared_bytes and comm.size <= DIRECT_MAX_RANKS and host_count(comm) == comm.size


def measured_choice(comm: Communicator, nbytes: int, count: bool = False) -> str:
    """The fastest of `measured_candidates(nbytes)` for an all-reduce of nbytes over comm, measured for nbytes'
    power-of-two size class on its first ask and kept on comm (`MPIComm.dup` passes it on).
    count=True (ring_allreduce's calls) counts the call: after MEASURED_AGAIN_AFTER calls of the
    class and then every MEASURED_EVERY, the next call measures again. Ranks make the same calls
    in the same order (verify_layout checks the layouts), so they count alike and measure together.
    A measurement is collective: every candidate runs MEASURED_ROUNDS times (MEASURED_LARGE_ROUNDS
    from MEASURED_MAX_BYTES on, with a ping-pong of `_wire_probe` in the same rounds) on a scratch
    float32 buffer of nbytes (zeros: the data do not change the time), interleaved in an order
    rotating by one per round, each call between barriers; rank 0 gathers every rank's times, picks
    with `measured_pick` (the kept pick is the incumbent; from MEASURED_MAX_BYTES on `large_pick`:
    the faster by more than MEASURED_LARGE_MARGIN, a tie by the wire fraction) and broadcasts its
    answer, so every rank keeps the same one. The candidates return the same bits, so the pick is
    invisible in the results. The scores are kept in comm._ring_measured_ms (ms per candidate, per
    size class; from MEASURED_MAX_BYTES on with the wire floor as 'floor')."""
    key = max(int(nbytes), 1).bit_length()
    cache, calls = _measured_state(comm)
    if count:
        calls[key] = k = calls.get(key, 0) + 1
        if k == MEASURED_AGAIN_AFTER or (k > MEASURED_AGAIN_AFTER and (k - MEASURED_AGAIN_AFTER) % MEASURED_EVERY == 0):
            return _measure(comm, nbytes, key, cache)
    pick = cache.get(key)
    return pick if pick is not None else _measure(comm, nbytes, key, cache)


def _measure(comm: Communicator, nbytes: int, key: int, cache: dict) -> str:
    x = _scratch("measure", max(1, int(nbytes) // 4), np.dtype(np.float32))
    x[...] = 0
    hier = hierarchy(comm) is not None
    large = nbytes >= MEASURED_MAX_BYTES and not hier
    names = list(measured_candidates(nbytes, hier))
    fns = {c: _MEASURED_FNS[c] for c in names}
    if not hier:  # the link's time per byte, for the tie-breaker (large_pick), in the same rounds
        probe = x[:max(1, min(x.size // comm.size, WIRE_PROBE_MAX_BYTES // 4))]
        fns["wire"] = lambda c, _: _wire_probe(c, probe)
    times = {c: [] for c in fns}
    order = list(fns)
    for i in range((MEASURED_LARGE_ROUNDS if large else MEASURED_ROUNDS) + 1):  # round 0 warms up (connections, scratch pages)
        for c in order[i % len(order):] + order[:i % len(order)]:
            comm.barrier()
            t0 = time.perf_counter()
            fns[c](comm, x)
            if i:
                times[c].append(time.perf_counter() - t0)
    everyone = comm.allgather(times)
    decided = None
    if comm.rank == 0 and not hier:
        # one way = half the fastest round trip (the slowest rank's time: rank 0's): the wire's time is a
        # lower bound that waits for a core only add to (on a loaded machine a low quantile still
        # carried them, 2.5-4x the quiet floor over 10 Gbit/s at 1 MB, turning ties there into the ring)
        one_way = min(max(t["wire"][i] for t in everyone) for i in range(len(times["wire"]))) / 2
        floor = 2 * (comm.size - 1) / comm.size * nbytes * one_way / probe.nbytes
        if large:
            decided = large_pick(everyone, floor, tuple(names))
        else:  # the fastest of the few-round ones (the kept pick as incumbent), then it against the ring
            few = tuple(c for c in names if c != MEASURED_RING)
            kept = cache.get(key)
            base, scores = measured_pick(everyone, kept if kept in few else None, few)
            seen = probe.nbytes >= WIRE_PROBE_MIN_BYTES  # else the probe passed the shaper in one burst
            pick, pair = large_pick(everyone, floor if seen else 0.0, (base, MEASURED_RING))
            decided = pick, {**scores, **pair, "floor": floor}
    elif comm.rank == 0:
        decided = measured_pick(everyone, cache.get(key), tuple(names))
    pick, scores = comm.bcast(decided, root=0)
    cache[key] = pick
    try:
        comm._ring_measured_ms = {**getattr(comm, "_ring_measured_ms", {}),
                                  key: {c: round(m * 1e3, 4) for c, m in scores.items()}}
    except AttributeError:
        pass
    return pick


def allreduce_algorithm(comm: Communicator, nbytes: int, small_bytes: int = DEFAULT_SMALL_BYTES,
                        shared_bytes: int = DEFAULT_SHARED_BYTES, mid_bytes: int = DEFAULT_MID_BYTES,
                        count: bool = False) -> str:
    """Which algorithm `ring_allreduce` runs for an uncompressed buffer of nbytes (see there).
    Collective on a communicator's first call (it asks MPI which ranks share a node) and, with one
    rank on each of 3-4 hosts, on the first ask for each size class below shared_bytes
    (`measured_choice` times the candidates there; count=True, as ring_allreduce asks, counts the
    call towards measuring again)."""
    algorithm = _algorithm_rule(comm, nbytes, small_bytes, shared_bytes, mid_bytes)
    return measured_choice(comm, nbytes, count) if algorithm == _MEASURED else algorithm


#: `_algorithm_rule`'s answer where the pick is `measured_choice`'s and may change between calls
_MEASURED = "measured"


def _algorithm_rule(comm: Communicator, nbytes: int, small_bytes: int, shared_bytes: int, mid_bytes: int) -> str:
    """`allreduce_algorithm`'s rule: the algorithm the size and the placement fix, or _MEASURED."""
    if nbytes < small_bytes:
        return "recursive_doubling"
    if nbytes < shared_bytes and node_window(comm) is not None:
        return "shared_memory"
    if nbytes < shared_bytes and hierarchy(comm) is not None:
        return _MEASURED if onefence_fits(comm, nbytes) else "hierarchical"
    p = comm.size
    if _measures_one_rank_hosts(comm, nbytes, shared_bytes):
        if p == 2:  # every candidate is one exchange of the whole buffer here
            return "oneshot"
        return _MEASURED
    if nbytes < mid_bytes and not (nbytes >= DEFAULT_CROSS_RING_BYTES and p & (p - 1) and mid_bytes <= DEFAULT_MID_BYTES
                                   and host_count(comm) > 1):
        return "halving_doubling"
    return "ring"


def _run_algorithm(comm: Communicator, buf: np.ndarray, op: str, algorithm: str, segment_bytes: int,
                   shared_bytes: int) -> np.ndarray:
    """Run `allreduce_algorithm`'s pick for an uncompressed buf (ring_allreduce's arguments)."""
    if algorithm == "hierarchical":
        return hierarchical_allreduce(comm, buf, op, segment_bytes=segment_bytes)
    if algorithm == "recursive_doubling":
        return recursive_doubling_allreduce(comm, buf, op)
    if algorithm == "shared_memory":
        return node_window(comm).allreduce(buf, op)
    if algorithm == "halving_doubling":
        return halving_doubling_allreduce(comm, buf, op)
    if algorithm == "ring":
        if _measures_one_rank_hosts(comm, buf.nbytes, shared_bytes):   # the ring measured_choice timed
            return _measured_ring(comm, buf, op, segment_bytes)
        return plain_ring_allreduce(comm, buf, op, segment_bytes)
    if algorithm == "onefence":
        return onefence_allreduce(comm, buf, op)
    piece = piece_bytes_for(buf.nbytes, segment_bytes)
    if algorithm == "oneshot":
        return oneshot_allreduce(comm, buf, op, piece)
    if algorithm == "direct":
        return direct_allreduce(comm, buf, op, piece)
    if algorithm == "rooted":
        return rooted_allreduce(comm, buf, op, piece)
    raise ValueError(f"algorithm: expected one of allreduce_algorithm's names, got {algorithm!r}")


_NO_PLANS: dict = {}


def _keep_plan(comm: Communicator, buf: np.ndarray, op: str, segment_bytes, small_bytes, shared_bytes,
               mid_bytes) -> None:
    """After a layout's verified call: what ring_allreduce runs for it from then on, kept on comm
    (`_layout_plan`)."""
    try:
        plans = comm._ring_plans
    except AttributeError:
        try:
            plans = comm._ring_plans = {}
        except AttributeError:  # a communicator with __slots__: dispatched every call
            return
    key = (buf.size, buf.dtype, op, segment_bytes, small_bytes, shared_bytes, mid_bytes)
    if key not in plans:
        if len(plans) >= 256:  # buckets come in a few sizes; anything else is churn
            plans.clear()
        plans[key] = _layout_plan(comm, buf.nbytes, op, int(segment_bytes), int(small_bytes), int(shared_bytes),
                                  int(mid_bytes))


def _layout_plan(comm: Communicator, nbytes: int, op: str, segment_bytes: int, small_bytes: int, shared_bytes: int,
                 mid_bytes: int):
    """ring_allreduce for one layout (no codec) once its first call has verified it across ranks: the
    algorithm `allreduce_algorithm` chose, bound (the 2-host hierarchy with its hosts), or for a
    measured size class `measured_choice` asked each call (it counts the call and re-measures on
    schedule) and its pick run. A call of a small all-reduce on a node with more ranks than cores
    pays for every Python call before its first message or copy-in: interleaved on the emulated
    cluster (2 hosts x 2 ranks, 64 KB over 10 Gbit/s, 1001 rounds, loaded), the 2-host hierarchy
    called directly read 0.28-0.55 ms at the 5th percentile where ring_allreduce's dispatch in front of
    it read 0.35-0.82 ms, though the dispatch is 1-2 us in a loop (cold caches after every switch)."""
    h = hierarchy(comm)
    two_hosts = h is not None and h.equal and h.slices.size == 2 and HIERARCHICAL_MODE == "slices"
    p = comm.size

    def run(algorithm, buf):
        if algorithm == "hierarchical" and two_hosts:
            return _hierarchical_two_hosts(h, buf, op, p, segment_bytes)
        return _run_algorithm(comm, buf, op, algorithm, segment_bytes, shared_bytes)

    algorithm = _algorithm_rule(comm, nbytes, small_bytes, shared_bytes, mid_bytes)
    if algorithm == _MEASURED:
        return lambda buf: run(measured_choice(comm, nbytes, True), buf)
    if algorithm == "hierarchical" and two_hosts:
        return lambda buf: _hierarchical_two_hosts(h, buf, op, p, segment_bytes)
    return lambda buf: _run_algorithm(comm, buf, op, algorithm, segment_bytes, shared_bytes)


def ring_allreduce(comm: Communicator, buf: np.ndarray, op: str = "sum",
                   segment_bytes: int = DEFAULT_SEGMENT_BYTES, codec=None,
                   rng: np.random.Generator | None = None, offset: int = 0,
                   small_bytes: int = DEFAULT_SMALL_BYTES,
                   mid_bytes: int = DEFAULT_MID_BYTES, schedule: str = "once",
                   shared_bytes: int = DEFAULT_SHARED_BYTES) -> np.ndarray:
    """All-reduce `buf` in place over `comm` with the ring; returns buf.

    op: 'sum' or 'mean'. codec: None, a name from `codecs`, a Codec or an ErrorFeedback
    (float32 only). schedule, where a codec quantizes (ignored without one: nothing to quantize,
    the result is the plain ring's, bit for bit):
    - 'once': full-precision reduce-scatter; each chunk's owner encodes the reduced chunk once.
    - 'hop': every reduce-scatter send is encoded too (the partial sum, segment by segment) and
      the receiver decodes and adds; the all-gather is the 'once' one. Wire bytes fall to about
      the codec ratio in both phases, at the price of p encodes in a chain per value, so the
      error grows with p (an ErrorFeedback keeps each encode's loss and sends it next call).
    offset: where buf starts inside the buffer an ErrorFeedback residual covers (used by
    BucketedAllreduce). rng: stochastic rounding source.
    small_bytes: uncompressed buffers below this size take `recursive_doubling_allreduce`;
    those from small_bytes up to shared_bytes take the shared-memory window (`shm.NodeWindow`)
    when all ranks are on one MPI node, or `hierarchical_allreduce` when they span several nodes
    and some node runs more than one (then with the codec too, across hosts only), or, with one
    rank on each of at most DIRECT_MAX_RANKS hosts, `oneshot_allreduce` (two ranks) or the fastest of
    `measured_candidates` (`measured_choice`); otherwise those up to mid_bytes take
    `halving_doubling_allreduce`. small_bytes=0, shared_bytes=0, mid_bytes=0
    force the ring at every size."""
    if op not in ("sum", "mean"):
        raise ValueError(f"op: expected 'sum' or 'mean', got {op!r}")
    _check_buf(buf)
    _check_schedule(schedule)
    if codec is None:  # a layout seen (and verified) before: its plan, with no dispatch (`_layout_plan`)
        plan = getattr(comm, "_ring_plans", _NO_PLANS).get(
            (buf.size, buf.dtype, op, segment_bytes, small_bytes, shared_bytes, mid_bytes))
        if plan is not None:
            return plan(buf)
    codec = get_codec(codec)
    if codec is not None and buf.dtype != np.float32:
        raise ValueError(f"codec={codec.name}: expected a float32 buffer, got {buf.dtype}")
    p = comm.size
    if p == 1:
        return buf
    verify_layout(comm, (buf.size, buf.dtype.str, op, None if codec is None else codec.name,
                         schedule if codec is not None else None, int(segment_bytes), int(small_bytes),
                         int(shared_bytes), int(mid_bytes)))
    if codec is None:
        algorithm = allreduce_algorithm(comm, buf.nbytes, small_bytes, shared_bytes, mid_bytes, count=True)
        _keep_plan(comm, buf, op, segment_bytes, small_bytes, shared_bytes, mid_bytes)
        return _run_algorithm(comm, buf, op, algorithm, segment_bytes, shared_bytes)
    elif small_bytes <= buf.nbytes < shared_bytes and hierarchy(comm) is not None:
        return hierarchical_allreduce(comm, buf, op, segment_bytes, codec, rng, offset, schedule)
    off = chunk_offsets(buf.size, p)
    if codec is not None and rng is None:
        rng = np.random.default_rng()
    if codec is not None and schedule == "hop":
        _reduce_scatter_hop(comm, buf, off, codec, rng, offset, segment_bytes)
    else:
        _reduce_scatter(comm, buf, off, max(1, int(segment_bytes) // buf.itemsize))
    oa, ob = _chunk(off, comm.rank + 1)
    if op == "mean":
        buf[oa:ob] /= p  # by the owner only, then copied: ranks stay bit-identical
    if codec is None:
        _allgather(comm, buf, off, max(1, int(segment_bytes) // buf.itemsize))
    else:
        _allgather_encoded(comm, buf, off, codec, rng, offset, segment_bytes)
    return buf


#: how the hierarchical all-reduce crosses hosts: 'slices' (every rank all-reduces its node-reduced
#: chunk with the same chunk's owners on the other hosts; needs equal ranks per host) or 'leader'
#: (one rank per host all-reduces the node's whole sum). Measured with bench/cluster_allreduce.py.
HIERARCHICAL_MODE = "slices"


def hierarchical_allreduce(comm: Communicator, buf: np.ndarray, op: str = "sum",
                           segment_bytes: int = DEFAULT_SEGMENT_BYTES, codec=None, rng=None, offset: int = 0,
                           schedule: str = "once", mode: str | None = None) -> np.ndarray:
    """All-reduce buf in place over ranks on several hosts: reduce-scatter within each host through
    its shared-memory window, all-reduce across hosts (ring_allreduce's size-based choice, with
    the codec if any: only the cross-host bytes are compressed), then share the result within
    each host through the window. mode: HIERARCHICAL_MODE's choices ('leader' where hosts run
    different rank counts). Ranks end bit-identical: each value crosses hosts in one all-reduce
    whose ranks end identical, and is copied within the host."""
    h = hierarchy(comm)
    if h is None:
        raise ValueError(f"hierarchical_allreduce: {comm!r} has no host with several ranks among several hosts")
    mode = mode or (HIERARCHICAL_MODE if h.equal else "leader")
    if mode not in ("slices", "leader"):
        raise ValueError(f"mode: expected 'slices' or 'leader', got {mode!r}")
    if mode == "slices" and not h.equal:
        raise ValueError("mode='slices': expected the same number of ranks on every host")

    if mode == "slices" and codec is None and h.slices.size == 2:
        return _hierarchical_two_hosts(h, buf, op, comm.size, segment_bytes)

    def across(x, start):
        ring_allreduce(h.slices if mode == "slices" else h.leaders, x, "sum", segment_bytes, codec, rng, offset + start,
                       schedule=schedule)

    if mode == "slices":
        return h.window.allreduce(buf, op, across, divisor=comm.size)
    return h.window.allreduce_via_leader(buf, op, across, divisor=comm.size)


def _hierarchical_two_hosts(h, buf: np.ndarray, op: str, divisor: int, segment_bytes: int) -> np.ndarray:
    """The 'slices' hierarchical all-reduce over two hosts, pipelined and with no barrier in the host
    (`NodeWindow.stream`): every rank first copies its host peers' chunks of its buffer into its slot
    and publishes them (before anything else: a host peer waits for exactly this), then sums each
    piece of its own chunk over the host once its peers have copied theirs, and sends it to its
    counterpart on the other host at once; then it adds the counterpart's pieces as they arrive,
    publishes each finished piece to its host peers and copies theirs as they are published.
    Pieces as `piece_bytes_for` cuts the chunk (below the wheel's TCP rendezvous size for chunks under
    EAGER_MAX_BYTES). The same bits as the fenced form (node sum own values first then rank order,
    then host 0's sum + host 1's), ranks identical. Against the fenced form (two barriers in the host:
    every rank waits for the slowest twice), interleaved on the emulated cluster, 2 hosts x 2 ranks,
    151 rounds, load 11-13, median of the per-round ratios: 10 Gbit/s 0.83-0.85 / 0.86-0.94 /
    0.83-0.95 at 256 KB / 1 MB / 4 MB, 1 Gbit/s 0.82-0.87 / 0.91-0.94 / 0.94-0.98.
    The Python between a call's entry and its copy-in is kept to the stream's set-up (the pieces are
    computed once per layout, `_two_host_piece`): a rank that publishes late keeps its host peer
    polling, and on a node with more ranks than cores a poll that outlasts its spins yields the core."""
    if buf.size == 0:
        return buf
    w, other = h.window, h.slices
    s = w.stream(buf, _two_host_piece(buf.size, buf.itemsize, w.size, segment_bytes))
    for i in range(s.rounds):  # all of it first: a peer waits at most for the piece it needs next
        s.copy_in(i)
    peer = 1 - other.rank
    pieces = s.pieces
    inbox = _scratch("hier_inbox", pieces[-1][1] if pieces else 0, buf.dtype)
    recvs = [other.irecv(inbox[x:y], peer, _TAG_RS) for x, y in pieces]
    sends = []
    progress = functools.partial(_test_all, other, sends)
    for i in range(len(pieces)):
        sends.append(other.isend(s.reduce(i, progress), peer, _TAG_RS))
    first = other.rank == 0
    wait = _waits(other, buf.nbytes)[0]
    for i, ((x, y), rq, sq) in enumerate(zip(pieces, recvs, sends)):
        wait(rq)
        wait(sq)  # the piece is summed in place below
        mine, theirs = s.result(i), inbox[x:y]
        if first:
            np.add(mine, theirs, out=mine)
        else:
            np.add(theirs, mine, out=mine)
        if op == "mean":
            mine /= divisor
        s.done(i)
        if i + 1 < len(pieces):
            s.collect(False)
    s.collect(True)
    return buf


@functools.lru_cache(maxsize=256)
def _two_host_piece(n: int, itemsize: int, k: int, segment_bytes: int) -> int:
    """Values per piece of `_hierarchical_two_hosts` for n values over k ranks a host."""
    return max(1, piece_bytes_for(-(-n // k) * itemsize, segment_bytes) // itemsize)


def _test_all(comm: Communicator, reqs: list) -> None:
    """Let MPI move the posted messages (a test of each; completed ones become null requests)."""
    if reqs and hasattr(comm, "_MPI"):
        comm._MPI.Request.Testall(reqs)


def _two_equal_hosts(comm: Communicator) -> bool:
    h = hierarchy(comm)
    return h is not None and h.equal and h.slices.size == 2


def onefence_fits(comm: Communicator, nbytes: int) -> bool:
    """Whether `onefence_allreduce` is a candidate for nbytes over comm: two hosts, the same rank
    count on each (more than one), below HIER_MEASURED_MAX_BYTES."""
    return 0 < nbytes < HIER_MEASURED_MAX_BYTES and _two_equal_hosts(comm)


def onefence_allreduce(comm: Communicator, buf: np.ndarray, op: str = "sum") -> np.ndarray:
    """All-reduce buf in place over two hosts of k ranks each with one synchronization in the host
    (since session 11 progress counters, not a fence):
    every rank sums the host's whole buffers through the shared window (`NodeWindow.sum_whole`),
    swaps that sum with its counterpart on the other host (the rank of its node rank there) and
    adds the two, host 0's first. The hierarchical all-reduce waits in the host twice per piece (for
    the copy-in, for the results) and sends half as many bytes across: for short buffers, where a
    wait for every rank of the host to be scheduled can cost more than the bytes, this is the other
    side of that trade; `measured_choice` picks between them. The same bits as the hierarchical all-reduce: each chunk is summed over the
    host in its order, then host 0's sum + host 1's."""
    if not _two_equal_hosts(comm):
        raise ValueError(f"onefence_allreduce: expected {comm!r} to span two hosts with the same number (> 1) of "
                         "ranks each")
    if buf.size == 0:
        return buf
    h = hierarchy(comm)
    other, peer = h.slices, 1 - h.slices.rank
    node = h.window.sum_whole(buf, _scratch("onefence_node", buf.size, buf.dtype))
    inbox = _scratch("onefence_in", buf.size, buf.dtype)
    pieces = _pieces(buf.size, buf.itemsize, None)
    recvs = [other.irecv(inbox[x:y], peer, _TAG_RS) for x, y in pieces]
    sends = [other.isend(node[x:y], peer, _TAG_RS) for x, y in pieces]
    other.waitall(recvs)
    first, second = (node, inbox) if other.rank == 0 else (inbox, node)
    np.add(first, second, out=buf)
    if op == "mean":
        buf /= comm.size
    other.waitall(sends)
    return buf


def _reduce_scatter(comm, buf, off, seg):
    """Pipelined full-precision reduce-scatter: a reduced segment is forwarded at once. Rank r
    ends holding the sum of chunk r + 1."""
    p, r = comm.size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    maxc = int(np.diff(off).max())
    scratch = [_scratch("recv0", maxc, buf.dtype), _scratch("recv1", maxc, buf.dtype)]

    def post_recvs(step):
        a, b = _chunk(off, r - step - 1)
        s = scratch[step % 2]
        return [(x, y, comm.irecv(s[x - a:y - a], left, _TAG)) for x, y in segment_bounds(a, b, seg)]

    sends = [comm.isend(buf[x:y], right, _TAG) for x, y in segment_bounds(*_chunk(off, r), seg)]
    recvs = post_recvs(0)
    for step in range(p - 1):
        last = step == p - 2
        nxt = None if last else post_recvs(step + 1)
        a = _chunk(off, r - step - 1)[0]
        s = scratch[step % 2]
        for x, y, req in recvs:
            comm.wait(req)
            np.add(buf[x:y], s[x - a:y - a], out=buf[x:y])
            if not last:
                sends.append(comm.isend(buf[x:y], right, _TAG))
        recvs = nxt
    comm.waitall(sends)  # the all-gather overwrites chunks sent above


def _reduce_scatter_hop(comm, buf, off, codec, rng, offset, segment_bytes):
    """Reduce-scatter with every message encoded ('hop' schedule), pipelined like the fp32 one.

    Rank r sends chunks r, r - 1, ..., r + 2 (each once) and never chunk r + 1, which it owns and
    encodes in the all-gather: with an ErrorFeedback, one residual the size of the buffer holds
    every value's loss exactly once per all-reduce, always for the same role (the partial sum
    this rank forwards, or the owner's result), so the next call sends it on. Segments are
    whole codec quanta (`hop_segment`), each encoded on its own; a segment's bytes are received
    into and re-encoded from the same place in one wire buffer (its receive completes before
    this rank encodes and sends its own partial sum of that segment)."""
    p, r = comm.size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    seg = hop_segment(codec, segment_bytes)
    segs = [segment_bounds(*_chunk(off, c), seg) for c in range(p)]
    place, pos = {}, 0
    for pieces in segs:
        for x, y in pieces:  # 64-byte aligned pieces: the codecs want 4-byte aligned output
            place[x] = (pos, codec.nbytes(y - x))
            pos += -(-place[x][1] // 64) * 64
    wire = _scratch("wire_hop", pos, np.uint8)
    piece = lambda x: wire[place[x][0]:place[x][0] + place[x][1]]  # noqa: E731
    decoded = _scratch("decoded", min(seg, int(np.diff(off).max())), np.float32)

    def send(x, y):
        w = piece(x)
        _encode(codec, buf[x:y], w, rng, offset + x)
        return comm.isend(w, right, _TAG)

    def post_recvs(step):
        return [(x, y, comm.irecv(piece(x), left, _TAG)) for x, y in segs[(r - step - 1) % p]]

    sends = [send(x, y) for x, y in segs[r]]
    recvs = post_recvs(0)
    for step in range(p - 1):
        last = step == p - 2
        nxt = None if last else post_recvs(step + 1)
        for x, y, req in recvs:
            comm.wait(req)
            d = decoded[:y - x]
            codec.decode(piece(x), d)
            np.add(buf[x:y], d, out=buf[x:y])
            if not last:
                sends.append(send(x, y))
        recvs = nxt
    comm.waitall(sends)


def _allgather(comm, buf, off, seg):
    """Full-precision all-gather straight into buf, forwarding each segment as it arrives."""
    p, r = comm.size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    recvs = []
    for step in range(p - 1):
        recvs += [comm.irecv(buf[x:y], left, _TAG) for x, y in segment_bounds(*_chunk(off, r - step), seg)]
    sends = [comm.isend(buf[x:y], right, _TAG) for x, y in segment_bounds(*_chunk(off, r + 1), seg)]
    k = 0
    for step in range(p - 1):
        for x, y in segment_bounds(*_chunk(off, r - step), seg):
            comm.wait(recvs[k])
            k += 1
            if step < p - 2:
                sends.append(comm.isend(buf[x:y], right, _TAG))
    comm.waitall(sends)


def _allgather_encoded(comm, buf, off, codec, rng, offset, segment_bytes):
    """Compressed all-gather (both schedules): the owner encodes its reduced chunk once, the ring
    forwards those bytes unchanged and every rank, owner included, decodes the same bytes."""
    p, r = comm.size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    nbytes = [codec.nbytes(int(b - a)) for a, b in zip(off[:-1], off[1:])]
    starts = np.concatenate([[0], np.cumsum([(nb + 63) // 64 * 64 for nb in nbytes])]).astype(int)
    wire = _scratch("wire_gather", int(starts[-1]), np.uint8)
    blob = lambda c: wire[starts[c % p]:starts[c % p] + nbytes[c % p]]  # noqa: E731
    bseg = max(1, int(segment_bytes))
    recvs = []
    for step in range(p - 1):
        bl = blob(r - step)
        recvs += [comm.irecv(bl[x:y], left, _TAG) for x, y in segment_bounds(0, bl.size, bseg)]
    oa, ob = _chunk(off, r + 1)
    mine = blob(r + 1)
    if ob > oa:
        _encode(codec, buf[oa:ob], mine, rng, offset + oa)
    sends = [comm.isend(mine[x:y], right, _TAG) for x, y in segment_bounds(0, mine.size, bseg)]
    k = 0
    for step in range(p - 1):
        bl = blob(r - step)
        for x, y in segment_bounds(0, bl.size, bseg):
            comm.wait(recvs[k])
            k += 1
            if step < p - 2:
                sends.append(comm.isend(bl[x:y], right, _TAG))
    for c in range(p):
        a, b = _chunk(off, c)
        if b > a:
            codec.decode(blob(c), buf[a:b])
    comm.waitall(sends)


class BucketedAllreduce:
    """All-reduce a flat gradient arena in contiguous buckets, so communication of the buckets
    backward has finished overlaps the rest of backward.

    start(i) queues bucket i; wait() blocks until every started bucket is reduced. Buckets run
    in start order on one background thread over a duplicated communicator (its own message
    space), which needs MPI_THREAD_MULTIPLE (mpi4py asks for it by default); without it start()
    reduces synchronously. A failure on the thread is re-raised by wait(). The thread's waits
    sleep poll_interval_s between tests of a request (see MPIComm) instead of spinning."""

    def __init__(self, comm: Communicator, arena_grad: np.ndarray, bucket_bytes: int = 1 << 22,
                 op: str = "mean", codec=None, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 threaded: bool | None = None, schedule: str = "once", rng: np.random.Generator | None = None,
                 poll_interval_s: float = 50e-6, watchdog=None):
        _check_buf(arena_grad, "arena_grad")
        _check_schedule(schedule)
        self.schedule = schedule
        if bucket_bytes < arena_grad.itemsize:
            raise ValueError(f"bucket_bytes: expected at least one value ({arena_grad.itemsize} bytes), got {bucket_bytes}")
        self.comm, self.grad, self.op, self.segment_bytes = comm, arena_grad, op, segment_bytes
        self.watchdog = watchdog  # a watchdog.Watchdog each bucket's all-reduce runs under
        self.codec = get_codec(codec)
        per = bucket_bytes // arena_grad.itemsize
        self.bounds = segment_bounds(0, arena_grad.size, per)
        if threaded is None:
            threaded = comm.size > 1 and comm.thread_multiple
        if threaded and not comm.thread_multiple:
            raise ValueError("BucketedAllreduce(threaded=True): the MPI library was not initialized with MPI_THREAD_MULTIPLE")
        self.threaded = threaded
        self._pending = 0
        self._error: BaseException | None = None
        #: a codec's stochastic rounding source; the owner may replace it between steps
        self.rng = np.random.default_rng() if rng is None else rng
        if threaded:
            self._comm = comm.dup(poll_interval_s)  # sleeping waits: backward keeps the cores
            self._queue: queue.Queue = queue.Queue()
            self._done = threading.Condition()
            self._thread = threading.Thread(target=self._worker, daemon=True, name="ft-allreduce")
            self._thread.start()

    def __len__(self):
        return len(self.bounds)

    def _reduce(self, comm, i):
        a, b = self.bounds[i]
        with watched(self.watchdog, "all-reduce", f"bucket {i}"):
            ring_allreduce(comm, self.grad[a:b], op=self.op, segment_bytes=self.segment_bytes,
                           codec=self.codec, rng=self.rng, offset=a, schedule=self.schedule)

    def _worker(self):
        while True:
            i = self._queue.get()
            if i is None:
                return
            try:
                if self._error is None:
                    self._reduce(self._comm, i)
            except BaseException as e:  # noqa: BLE001 - handed to wait()
                self._error = e
            with self._done:
                self._pending -= 1
                self._done.notify_all()

    def start(self, i: int) -> None:
        if not 0 <= i < len(self.bounds):
            raise IndexError(f"BucketedAllreduce.start(bucket={i}): expected 0 <= bucket < {len(self.bounds)}")
        if not self.threaded:
            self._reduce(self.comm, i)
            return
        with self._done:
            self._pending += 1
        self._queue.put(i)

    def start_all(self) -> None:
        for i in range(len(self.bounds)):
            self.start(i)

    def wait(self) -> None:
        if self.threaded:
            with self._done:
                while self._pending:
                    self._done.wait()
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError("BucketedAllreduce: a bucket failed on the communication thread") from err

    def close(self) -> None:
        if self.threaded and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
