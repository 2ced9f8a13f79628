"""Interleaved A/B of all-reduce variants on the emulated cluster, in ONE job per layout and link:
MPICH's Allreduce (one algorithm, --mpich), ring_allreduce ('auto') and the variants named, a fresh
random order every round (the same on every rank), each sample the slowest rank's time between
barriers. For iterating on one bench/cluster_allreduce.py cell at a time. Needs root.

    python bench/dev/net_ab.py --layouts 2x2 --rates 10gbit --sizes 1048576 --names mpi,auto,hier \\
        [--mpich recursive_doubling] [--rounds 61] [--phases]

Variants ('names'): mpi, mpi:<algorithm> (MPICH's Allreduce with that algorithm, switched through MPI_T
before its barrier: several in one job, see bench/mpich_algorithms.py), auto, hier (the 2-host pipelined hierarchy), hier_p<KB> (its pieces at KB),
direct, direct_p<KB>, ring, ring_p<KB> (plain_ring_allreduce in pieces of KB), onefence, auto2 (auto again:
the noise between two identical entries), and the V_* functions below by name (hold: the 2-host hierarchy
as of session 11; disp / dv / da / dh: parts of ring_allreduce's dispatch before it; hy / ofy: yielding MPI
waits; spin_p<N>: N polls before yielding; dnc: direct with the all-gather straight into buf, as main has it
from the rendezvous size on; dold: direct's all-gather through scratch at every size;
oldauto: ring_allreduce's dispatch before the per-layout plans; before: main before session 12, near enough).
Prints median / p20 / p5 / min: with 1001 rounds the p5 is the nearest thing to a quiet machine's time
on a loaded one (two identical entries read 0.417 / 0.418 ms at 64 KB, load 8).
--phases: the 2-host hierarchy once more with its phases timed per rank (share+fence, pipeline, finish).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fasttrain.parallel import get_comm, launched_world_size, ring_allreduce  # noqa: E402


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def variant(comm, name: str, buf):
    from fasttrain.parallel import ring as R

    base, _, arg = name.partition("_p")
    kb = int(arg) << 10 if arg else None
    if base in ("hy", "ofy", "spin"):  # _p<N>: N spins before yielding, not KB
        kb = int(arg) if arg else None
    if name == "mpi" or name.startswith("mpi:"):  # mpi:<algorithm>: set through MPI_T before its barrier (child)
        return lambda: comm.allreduce_mpi(buf)
    if name in ("auto", "auto2"):  # auto2: the same call again, for the noise between two identical entries
        return lambda: ring_allreduce(comm, buf)
    if base == "hier":
        h = R.hierarchy(comm)
        seg = kb or R.DEFAULT_SEGMENT_BYTES
        if kb:
            return lambda: _hier_pieces(h, buf, kb)
        return lambda: R._hierarchical_two_hosts(h, buf, "sum", comm.size, seg)
    if base == "hier2":
        return lambda: R.hierarchical_allreduce(comm, buf, **({"segment_bytes": kb} if kb else {}))
    if base == "direct":
        return lambda: R.direct_allreduce(comm, buf, segment_bytes=kb)
    if base == "ring":
        return lambda: R.plain_ring_allreduce(comm, buf, segment_bytes=kb or R.piece_bytes_for(buf.nbytes))
    if base == "onefence":
        return lambda: R.onefence_allreduce(comm, buf)
    if base == "oneshot":
        return lambda: R.oneshot_allreduce(comm, buf, piece_bytes=kb)
    if base == "rooted":
        return lambda: R.rooted_allreduce(comm, buf, piece_bytes=kb)
    extra = getattr(sys.modules[__name__], "V_" + base, None)
    if extra is not None:
        return lambda: extra(comm, buf, kb)
    raise SystemExit(f"net_ab: unknown variant {name!r}")


def _hier_pieces(h, buf, piece_bytes):
    """_hierarchical_two_hosts with its pieces forced to piece_bytes."""
    from fasttrain.parallel import ring as R

    saved = R.piece_bytes_for
    R.piece_bytes_for = lambda nbytes, seg=None: piece_bytes
    try:
        return R._hierarchical_two_hosts(h, buf, "sum", h.window.size * 2, piece_bytes)
    finally:
        R.piece_bytes_for = saved


_FLAGS: dict = {}


def _flags(h):
    """A shared window of two int64 progress counters per rank of the host (own cache line each):
    [0] how many copy-in pieces this rank has written in call seq, [1] how many result pieces."""
    f = _FLAGS.get(id(h))
    if f is None:
        from mpi4py import MPI
        node = h.window.node
        win = MPI.Win.Allocate_shared(64, 8, comm=node)
        views = [np.frombuffer(win.Shared_query(j)[0], np.int64)[:8] for j in range(node.Get_size())]
        win.Lock_all()
        views[node.Get_rank()][:] = 0
        win.Sync()
        node.Barrier()
        win.Sync()
        f = _FLAGS[id(h)] = [win, views, 0]
    return f


def _spin(v, i, target):
    k = 0
    while v[i] < target:
        k += 1
        if k > 50:
            import os
            os.sched_yield()


def V_flag(comm, buf, kb, fence_in=False):
    """2 hosts: the pipelined hierarchy with no fence: the copy-in and the result pieces published by
    per-rank progress counters in a shared window, each piece used as soon as it is there."""
    from fasttrain.parallel import ring as R

    h = R.hierarchy(comm)
    w, other = h.window, h.slices
    f = _flags(h)
    win, views = f[0], f[1]
    f[2] += 1
    seq = f[2] << 32
    if buf.nbytes > w.half:
        w._grow(max(buf.nbytes, 2 * w.half))
    plan = w._plan(buf.size, buf.dtype, w.parity * w.half)
    w.parity ^= 1
    mine_slot, a, b, peers, results = plan
    k, me = w.size, w.rank
    piece_bytes = kb or R.piece_bytes_for((b - a) * buf.itemsize)
    cut = [R._pieces(y - x, buf.itemsize, piece_bytes) for x, y, _ in results]   # per chunk, offsets in the chunk
    order = sorted(((i, j) for j in range(k) for i in range(len(cut[j]))))       # every writer's copy-in order
    where = {(j, i): n for n, (i, j) in enumerate(x for x in order if x[1] != me)}
    mine_v = views[me]
    if fence_in:
        mine_slot[:a] = buf[:a]
        mine_slot[b:] = buf[b:]
        w._fence()
    else:
        n = 0
        for i, j in order:
            if j == me:
                continue
            x0 = results[j][0]
            x, y = cut[j][i]
            mine_slot[x0 + x:x0 + y] = buf[x0 + x:x0 + y]
            n += 1
            win.Sync()
            mine_v[0] = seq | n
    pieces = cut[me]
    peer = 1 - other.rank
    chunk = mine_slot[a:b]
    inbox = R._scratch("hier_inbox", b - a, buf.dtype)
    recvs = [other.irecv(inbox[x:y], peer, R._TAG_RS) for x, y in pieces]
    sends = []
    # the copy-in pieces of this rank's chunk, as its host peers publish them (their order: `order`)
    others = [q for q in range(k) if q != me]
    for i, (x, y) in enumerate(pieces):
        if not fence_in:
            for q in others:
                # writer q's index of (chunk me, piece i) in its own order (q skips its own chunk)
                idx = sum(1 for (ii, jj) in order if jj != q and (ii, jj) <= (i, me))
                _spin(views[q], 0, seq | idx)
            win.Sync()
        sends.append(other.isend(w.reduce_piece(buf, plan, x, y), peer, R._TAG_RS))
    copied = {q: 0 for q in others}

    def copy_ready(block):
        for q in others:
            have = copied[q]
            if block:
                _spin(views[q], 1, seq | len(cut[q]))
            ready = int(views[q][1])
            n = ready & 0xFFFFFFFF if ready >> 32 == seq >> 32 else 0
            if n > have:
                win.Sync()
                x0, _, res = results[q]
                for x, y in cut[q][have:n]:
                    buf[x0 + x:x0 + y] = res[x:y]
                copied[q] = n

    for i, ((x, y), rq, sq) in enumerate(zip(pieces, recvs, sends)):
        other.wait(rq)
        other.wait(sq)
        m, theirs = chunk[x:y], inbox[x:y]
        if other.rank == 0:
            np.add(m, theirs, out=m)
        else:
            np.add(theirs, m, out=m)
        buf[a + x:a + y] = m
        win.Sync()
        mine_v[1] = seq | (i + 1)
        copy_ready(False)
    copy_ready(True)
    return buf


def V_flagout(comm, buf, kb):
    return V_flag(comm, buf, kb, fence_in=True)


def V_fenced(comm, buf, kb):
    """The 2-host pipelined hierarchy as it was before NodeWindow.stream (main ae56d9c): two fences."""
    from fasttrain.parallel import ring as R

    h = R.hierarchy(comm)
    w, other = h.window, h.slices
    plan = w.share(buf)
    _, a, b = plan[:3]
    chunk = plan[0][a:b]
    peer = 1 - other.rank
    pieces = R._pieces(b - a, buf.itemsize, kb or R.piece_bytes_for((b - a) * buf.itemsize))
    inbox = R._scratch("hier_inbox", b - a, buf.dtype)
    recvs = [other.irecv(inbox[x:y], peer, R._TAG_RS) for x, y in pieces]
    sends = [other.isend(w.reduce_piece(buf, plan, x, y), peer, R._TAG_RS) for x, y in pieces]
    for (x, y), rq, sq in zip(pieces, recvs, sends):
        other.wait(rq)
        other.wait(sq)
        mine, theirs = chunk[x:y], inbox[x:y]
        if other.rank == 0:
            np.add(mine, theirs, out=mine)
        else:
            np.add(theirs, mine, out=mine)
    return w.finish(buf, plan)


def V_dpm(comm, buf, kb):
    """direct_allreduce with its reduce-scatter sends piece-major (piece 0 to every peer, then piece 1),
    its all-gather receives posted after the reduce-scatter ones."""
    from fasttrain.parallel import ring as R

    p, r = comm.size, comm.rank
    seg = kb or R.piece_bytes_for(buf.nbytes)
    off, mine, peers, maxc = R._direct_plan(buf.size, p, r, max(1, int(seg) // buf.itemsize))
    a = off[r]
    inbox = R._scratch("direct_rs", p * maxc, buf.dtype).reshape(p, maxc)
    gather = R._scratch("direct_ag", buf.size, buf.dtype)
    tmp = R._scratch("direct_acc", mine[0][1] - mine[0][0] if mine else 1, buf.dtype)
    rs_recvs = {j: [comm.irecv(inbox[j, x - a:y - a], j, R._TAG_RS) for x, y in mine] for j, _ in peers}
    ag_recvs = [comm.irecv(gather[x:y], j, R._TAG_AG) for j, segs in peers for x, y in segs]
    most = max(len(segs) for _, segs in peers)
    sends = [comm.isend(buf[segs[i][0]:segs[i][1]], j, R._TAG_RS) for i in range(most) for j, segs in peers
             if i < len(segs)]
    for i, (x, y) in enumerate(mine):
        def row(j, i=i, x=x, y=y):
            if j == r:
                return buf[x:y]
            comm.wait(rs_recvs[j][i])
            return inbox[j, x - a:y - a]
        R._sum_in_rank_order(row, p, r, tmp[:y - x])
        sends += [comm.isend(buf[x:y], j, R._TAG_AG) for j, _ in peers]
    comm.waitall(ag_recvs)
    comm.waitall(sends)
    for j, _ in peers:
        x, y = off[j], off[j + 1]
        buf[x:y] = gather[x:y]
    return buf


def V_onefence_fenced(comm, buf, kb):
    """onefence_allreduce as it was before session 11's sum_whole (one fence in the host)."""
    from fasttrain.parallel import ring as R

    h = R.hierarchy(comm)
    w = h.window
    other, peer = h.slices, 1 - h.slices.rank
    if buf.nbytes > w.half:
        w._grow(max(buf.nbytes, 2 * w.half))
    base = w.parity * w.half
    w.parity ^= 1
    p = w.size
    slots = [s[base:base + buf.nbytes].view(buf.dtype) for s in w.slots]
    off = [int(x) for x in R.chunk_offsets(buf.size, p)]
    order = [(off[c], off[c + 1], [c] + [j for j in range(p) if j != c]) for c in range(p) if off[c + 1] > off[c]]
    slots[w.rank][...] = buf
    w._fence()
    node = R._scratch("onefence_node", buf.size, buf.dtype)
    for a, b, ranks in order:
        rows = [buf[a:b] if j == w.rank else slots[j][a:b] for j in ranks]
        acc = node[a:b]
        np.add(rows[0], rows[1], out=acc)
        for row in rows[2:]:
            np.add(acc, row, out=acc)
    inbox = R._scratch("onefence_in", buf.size, buf.dtype)
    pieces = R._pieces(buf.size, buf.itemsize, None)
    recvs = [other.irecv(inbox[x:y], peer, R._TAG_RS) for x, y in pieces]
    sends = [other.isend(node[x:y], peer, R._TAG_RS) for x, y in pieces]
    other.waitall(recvs)
    first, second = (node, inbox) if other.rank == 0 else (inbox, node)
    np.add(first, second, out=buf)
    other.waitall(sends)
    return buf


def V_lring(comm, buf, kb):
    """The ring with one Sendrecv per step on the raw communicator (one message per chunk, no pieces, no
    wrapper): the chain of plain_ring_allreduce (the same bits), MPICH's ring's schedule, the least Python."""
    from fasttrain.parallel import ring as R
    raw, p, r = comm.comm, comm.size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    off = R.chunk_offsets(buf.size, p)
    tmp = R._scratch("lring", int(np.diff(off).max()), buf.dtype)
    for step in range(p - 1):
        sa, sb = R._chunk(off, r - step)
        ra, rb = R._chunk(off, r - step - 1)
        raw.Sendrecv(buf[sa:sb], right, 79, tmp[:rb - ra], left, 79)
        np.add(buf[ra:rb], tmp[:rb - ra], out=buf[ra:rb])
    for step in range(p - 1):
        sa, sb = R._chunk(off, r + 1 - step)
        ra, rb = R._chunk(off, r - step)
        raw.Sendrecv(buf[sa:sb], right, 80, buf[ra:rb], left, 80)


def V_pring(comm, buf, kb):
    """V_lring with every receive posted before the first send (no unexpected messages) and Waitall per step."""
    from fasttrain.parallel import ring as R
    raw, p, r = comm.comm, comm.size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    off = R.chunk_offsets(buf.size, p)
    maxc = int(np.diff(off).max())
    tmp = R._scratch("pring", (p - 1) * maxc, buf.dtype).reshape(p - 1, maxc)
    rs = []
    for step in range(p - 1):
        ra, rb = R._chunk(off, r - step - 1)
        rs.append(raw.Irecv(tmp[step, :rb - ra], left, 79))
    ag = []
    for step in range(p - 1):
        ra, rb = R._chunk(off, r - step)
        ag.append(raw.Irecv(buf[ra:rb], left, 80))
    sends = []
    for step in range(p - 1):
        sa, sb = R._chunk(off, r - step)
        sends.append(raw.Isend(buf[sa:sb], right, 79))
        ra, rb = R._chunk(off, r - step - 1)
        rs[step].Wait()
        np.add(buf[ra:rb], tmp[step, :rb - ra], out=buf[ra:rb])
    for step in range(p - 1):
        sa, sb = R._chunk(off, r + 1 - step)
        sends.append(raw.Isend(buf[sa:sb], right, 80))
        ag[step].Wait()
    comm._MPI.Request.Waitall(sends)


_PERS: dict = {}


def _pers_plan(comm, buf, k):
    """Persistent requests (MPI_Send_init / MPI_Recv_init) for the ring of V_lring's chain on this buffer, each
    chunk in k even pieces, with every view the steps add through made once: per call only Start, Wait and
    np.add remain on each step. Keyed by the buffer's address (the plan keeps the buffer alive)."""
    from fasttrain.parallel import ring as R

    key = (id(comm), buf.ctypes.data, buf.size, buf.dtype.str, k)
    plan = _PERS.get(key)
    if plan is not None:
        return plan
    raw, MPI, p, r = comm.comm, comm._MPI, comm.size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    off = [int(v) for v in R.chunk_offsets(buf.size, p)]
    chunk = lambda c: (off[c % p], off[c % p + 1])  # noqa: E731
    cut = lambda a, b: R.even_bounds(a, b, max(1, -(-(b - a) // k))) if b > a else []  # noqa: E731
    maxc = max(off[c + 1] - off[c] for c in range(p))
    tmp = np.empty((p - 1, max(maxc, 1)), buf.dtype)
    rs = []  # per step: [(send request, recv request, acc view, tmp view)] per piece
    for s in range(p - 1):
        sa, sb = chunk(r - s)
        ra, rb = chunk(r - s - 1)
        sends = [raw.Send_init(buf[x:y], right, 79) for x, y in cut(sa, sb)]
        recvs = [(raw.Recv_init(tmp[s, x - ra:y - ra], left, 79), buf[x:y], tmp[s, x - ra:y - ra]) for x, y in cut(ra, rb)]
        rs.append((sends, recvs))
    ag = []
    for s in range(p - 1):
        sa, sb = chunk(r + 1 - s)
        ra, rb = chunk(r - s)
        ag.append(([raw.Send_init(buf[x:y], right, 80) for x, y in cut(sa, sb)],
                   [raw.Recv_init(buf[x:y], left, 80) for x, y in cut(ra, rb)]))
    rs_recvs = [q for _, recvs in rs for q, _, _ in recvs]
    ag_recvs = [q for _, recvs in ag for q in recvs]
    plan = _PERS[key] = (buf, tmp, rs, ag, rs_recvs, ag_recvs, MPI.Prequest.Startall, MPI.Request.Waitall)
    return plan


def V_pers(comm, buf, kb, k=1):
    """The ring with persistent requests built once per buffer (`_pers_plan`), each chunk in k pieces: piece i
    of a reduce-scatter step is added and its send of the next step started while piece i + 1 arrives. All
    reduce-scatter receives start at once; the all-gather's once the reduce-scatter's sends are done."""
    buf_, tmp, rs, ag, rs_recvs, ag_recvs, startall, waitall = _pers_plan(comm, buf, k)
    startall(rs_recvs)
    add = np.add
    sent = []
    first = rs[0][0]
    startall(first)
    sent += first
    last = len(rs) - 1
    for s, (_, recvs) in enumerate(rs):
        nxt = rs[s + 1][0] if s < last else None
        for i, (q, acc, t) in enumerate(recvs):
            q.Wait()
            add(acc, t, out=acc)
            if nxt is not None:
                nxt[i].Start()
        if nxt is not None:
            sent += nxt
    waitall(sent)
    startall(ag_recvs)
    sent = []
    first = ag[0][0]
    startall(first)
    sent += first
    last = len(ag) - 1
    for s, (_, recvs) in enumerate(ag):
        nxt = ag[s + 1][0] if s < last else None
        for i, q in enumerate(recvs):
            q.Wait()
            if nxt is not None:
                nxt[i].Start()
        if nxt is not None:
            sent += nxt
    waitall(sent)
    return buf


def V_perse(comm, buf, kb):
    """V_pers in the pieces plain_ring_allreduce takes where ring_allreduce runs it (`piece_bytes_for`: even
    pieces below the wheel's rendezvous size up to 2 MB)."""
    from fasttrain.parallel import ring as R

    chunk = -(-buf.size // comm.size) * buf.itemsize
    return V_pers(comm, buf, kb, max(1, -(-chunk // (kb or R.piece_bytes_for(buf.nbytes)))))


_DPERS: dict = {}


def V_dpers(comm, buf, kb):
    """direct_allreduce (its eager form: the all-gather through scratch, copied in at the end) from persistent
    requests built once per buffer: every receive and the reduce-scatter sends start at once, then per own
    piece: wait for the peers' pieces, add in the ring's order, start its all-gather sends."""
    from fasttrain.parallel import ring as R

    p, r = comm.size, comm.rank
    seg = kb or R.piece_bytes_for(buf.nbytes)
    key = (id(comm), buf.ctypes.data, buf.size, buf.dtype.str, seg)
    plan = _DPERS.get(key)
    if plan is None:
        raw, MPI = comm.comm, comm._MPI
        off, mine, peers, maxc = R._direct_plan(buf.size, p, r, max(1, int(seg) // buf.itemsize))
        a = off[r]
        inbox = np.empty((p, maxc), buf.dtype)
        gather = np.empty(buf.size, buf.dtype)
        order = R._peers(p, r)
        rs_recv = {j: [raw.Recv_init(inbox[j, x - a:y - a], j, R._TAG_RS) for x, y in mine] for j in order}
        starts = [q for j in order for q in rs_recv[j]]
        starts += [raw.Recv_init(gather[x:y], j, R._TAG_AG) for j, segs in peers for x, y in segs]
        starts += [raw.Send_init(buf[x:y], j, R._TAG_RS) for j, segs in peers for x, y in segs]
        steps = [([rs_recv[j][i] for j in order], buf[x:y], [inbox[j, x - a:y - a] for j in order],
                  [raw.Send_init(buf[x:y], j, R._TAG_AG) for j, _ in peers]) for i, (x, y) in enumerate(mine)]
        copies = [(buf[off[j]:off[j + 1]], gather[off[j]:off[j + 1]]) for j, _ in peers]
        plan = _DPERS[key] = (buf, inbox, gather, starts, steps, [q for st in steps for q in st[3]], copies,
                              MPI.Prequest.Startall, MPI.Request.Waitall, MPI.Request.Wait)
    _, _, _, starts, steps, ag_sends, copies, startall, waitall, wait = plan
    add = np.add
    startall(starts)
    for recvs, acc, rows, sends in steps:
        for q, row in zip(recvs, rows):
            wait(q)
            add(acc, row, out=acc)
        startall(sends)
    waitall(starts)
    waitall(ag_sends)
    for dst, src in copies:
        dst[...] = src
    return buf


def _per_call(fn):
    from fasttrain.parallel import ring as R

    saved, R.PERSISTENT_MAX_BYTES = R.PERSISTENT_MAX_BYTES, 0
    try:
        return fn()
    finally:
        R.PERSISTENT_MAX_BYTES = saved


def V_ringold(comm, buf, kb):
    """plain_ring_allreduce in ring_allreduce's pieces with its per-call requests (main before the persistent ring)."""
    from fasttrain.parallel import ring as R

    return _per_call(lambda: R.plain_ring_allreduce(comm, buf, segment_bytes=kb or R.piece_bytes_for(buf.nbytes)))


def V_directold(comm, buf, kb):
    """direct_allreduce with its per-call requests (main before the persistent direct, session 15)."""
    from fasttrain.parallel import ring as R

    return _per_call(lambda: R.direct_allreduce(comm, buf, segment_bytes=kb))


def V_autoold(comm, buf, kb):
    """ring_allreduce with per-call requests for the ring and direct (main before the persistent ring)."""
    return _per_call(lambda: ring_allreduce(comm, buf))


def V_pers2(comm, buf, kb):
    return V_pers(comm, buf, kb, 2)


def V_pers3(comm, buf, kb):
    return V_pers(comm, buf, kb, 3)


def V_pers4(comm, buf, kb):
    return V_pers(comm, buf, kb, 4)


def V_x(comm, buf, kb):
    """Not an all-reduce: every rank swaps kb KB with its counterpart on the other host, one message."""
    from fasttrain.parallel import ring as R
    h = R.hierarchy(comm)
    n = kb // 4
    src, dst = R._scratch("xs", n, np.float32), R._scratch("xd", n, np.float32)
    o = h.slices
    rq = o.irecv(dst, 1 - o.rank, 5)
    o.wait(o.isend(src, 1 - o.rank, 5))
    o.wait(rq)


def V_xp(comm, buf, kb):
    """V_x in 60 KB pieces."""
    from fasttrain.parallel import ring as R
    h = R.hierarchy(comm)
    n = kb // 4
    src, dst = R._scratch("xs", n, np.float32), R._scratch("xd", n, np.float32)
    o = h.slices
    pieces = R._pieces(n, 4, 60 << 10)
    rqs = [o.irecv(dst[x:y], 1 - o.rank, 5) for x, y in pieces]
    o.waitall([o.isend(src[x:y], 1 - o.rank, 5) for x, y in pieces])
    o.waitall(rqs)


def _yield_wait(req, spins=32):
    """Test req until it completes; after `spins` tests yield the core at every further test."""
    import os
    k = 0
    while not req.Test():
        k += 1
        if k > spins:
            os.sched_yield()


def V_hy(comm, buf, kb):
    """The 2-host pipelined hierarchy with its MPI waits testing and yielding the core after 32 tests
    (4 ranks on 2 cores: a rank spinning in MPI_Wait holds a core its host peer needs)."""
    from fasttrain.parallel import ring as R
    import functools

    h = R.hierarchy(comm)
    w, other = h.window, h.slices
    n = buf.size
    chunk_values = -(-n // w.size)
    s = w.stream(buf, max(1, R.piece_bytes_for(chunk_values * buf.itemsize, R.DEFAULT_SEGMENT_BYTES) // buf.itemsize))
    peer = 1 - other.rank
    pieces = s.pieces
    inbox = R._scratch("hier_inbox", pieces[-1][1] if pieces else 0, buf.dtype)
    recvs = [other.irecv(inbox[x:y], peer, R._TAG_RS) for x, y in pieces]
    sends = []
    progress = functools.partial(R._test_all, other, sends)
    for i in range(s.rounds):
        s.copy_in(i)
    for i in range(len(pieces)):
        sends.append(other.isend(s.reduce(i, progress), peer, R._TAG_RS))
    for i, ((x, y), rq, sq) in enumerate(zip(pieces, recvs, sends)):
        _yield_wait(rq, kb or 32)
        _yield_wait(sq, kb or 32)
        mine, theirs = s.result(i), inbox[x:y]
        if other.rank == 0:
            np.add(mine, theirs, out=mine)
        else:
            np.add(theirs, mine, out=mine)
        s.done(i)
        s.collect(False)
    s.collect(True)
    return buf


def V_ofy(comm, buf, kb):
    """onefence_allreduce with yielding waits (see V_hy)."""
    from fasttrain.parallel import ring as R

    h = R.hierarchy(comm)
    other, peer = h.slices, 1 - h.slices.rank
    node = h.window.sum_whole(buf, R._scratch("onefence_node", buf.size, buf.dtype))
    inbox = R._scratch("onefence_in", buf.size, buf.dtype)
    pieces = R._pieces(buf.size, buf.itemsize, None)
    recvs = [other.irecv(inbox[x:y], peer, R._TAG_RS) for x, y in pieces]
    sends = [other.isend(node[x:y], peer, R._TAG_RS) for x, y in pieces]
    for rq in recvs:
        _yield_wait(rq, kb or 32)
    first, second = (node, inbox) if other.rank == 0 else (inbox, node)
    np.add(first, second, out=buf)
    for sq in sends:
        _yield_wait(sq, kb or 32)
    return buf


def V_disp(comm, buf, kb):
    """ring_allreduce's dispatch (verify_layout, allreduce_algorithm with the call not counted), then the
    picked way called directly: what 'auto' costs beyond its pick, split from the pick itself."""
    from fasttrain.parallel import ring as R

    R.verify_layout(comm, (buf.size, buf.dtype.str, "sum", None, None, R.DEFAULT_SEGMENT_BYTES, R.DEFAULT_SMALL_BYTES,
                           R.DEFAULT_SHARED_BYTES, R.DEFAULT_MID_BYTES))
    alg = R.allreduce_algorithm(comm, buf.nbytes)
    if alg == "hierarchical":
        return R._hierarchical_two_hosts(R.hierarchy(comm), buf, "sum", comm.size, R.DEFAULT_SEGMENT_BYTES)
    return R._MEASURED_FNS[alg](comm, buf)


def V_dv(comm, buf, kb):
    """verify_layout, then the 2-host hierarchy called directly."""
    from fasttrain.parallel import ring as R

    R.verify_layout(comm, (buf.size, buf.dtype.str, "sum", None, None, R.DEFAULT_SEGMENT_BYTES, R.DEFAULT_SMALL_BYTES,
                           R.DEFAULT_SHARED_BYTES, R.DEFAULT_MID_BYTES))
    return R._hierarchical_two_hosts(R.hierarchy(comm), buf, "sum", comm.size, R.DEFAULT_SEGMENT_BYTES)


def V_da(comm, buf, kb):
    """allreduce_algorithm (not counted), then the 2-host hierarchy called directly."""
    from fasttrain.parallel import ring as R

    R.allreduce_algorithm(comm, buf.nbytes)
    return R._hierarchical_two_hosts(R.hierarchy(comm), buf, "sum", comm.size, R.DEFAULT_SEGMENT_BYTES)


def V_dh(comm, buf, kb):
    """hierarchy(comm) looked up per call, then the 2-host hierarchy."""
    from fasttrain.parallel import ring as R

    return R._hierarchical_two_hosts(R.hierarchy(comm), buf, "sum", comm.size, R.DEFAULT_SEGMENT_BYTES)


def V_spin(comm, buf, kb):
    """The 2-host hierarchy with shm._SPINS (polls before each further poll yields) set to kb for the call."""
    from fasttrain.parallel import ring as R
    from fasttrain.parallel import shm as S

    saved, S._SPINS = S._SPINS, kb
    try:
        return R._hierarchical_two_hosts(R.hierarchy(comm), buf, "sum", comm.size, R.DEFAULT_SEGMENT_BYTES)
    finally:
        S._SPINS = saved


def V_hold(comm, buf, kb):
    """_hierarchical_two_hosts as it was at main 74b8bc8 (session 11): the receives posted and the
    pieces computed before the copy-in."""
    from fasttrain.parallel import ring as R
    import functools

    h = R.hierarchy(comm)
    w, other = h.window, h.slices
    if buf.size == 0:
        return buf
    n = buf.size
    chunk_values = -(-n // w.size)
    s = w.stream(buf, max(1, R.piece_bytes_for(chunk_values * buf.itemsize, R.DEFAULT_SEGMENT_BYTES) // buf.itemsize))
    peer = 1 - other.rank
    pieces = s.pieces
    inbox = R._scratch("hier_inbox", pieces[-1][1] if pieces else 0, buf.dtype)
    recvs = [other.irecv(inbox[x:y], peer, R._TAG_RS) for x, y in pieces]
    sends = []
    progress = functools.partial(R._test_all, other, sends)
    for i in range(s.rounds):
        s.copy_in(i)
    for i in range(len(pieces)):
        sends.append(other.isend(s.reduce(i, progress), peer, R._TAG_RS))
    for i, ((x, y), rq, sq) in enumerate(zip(pieces, recvs, sends)):
        other.wait(rq)
        other.wait(sq)
        mine, theirs = s.result(i), inbox[x:y]
        if other.rank == 0:
            np.add(mine, theirs, out=mine)
        else:
            np.add(theirs, mine, out=mine)
        s.done(i)
        s.collect(False)
    s.collect(True)
    return buf


def V_dnc(comm, buf, kb):
    """direct_allreduce with the all-gather received straight into buf (no scratch, no copy at the end):
    the receive of a segment of peer j's chunk is posted once this rank's reduce-scatter send of that
    segment (from buf) has completed."""
    from fasttrain.parallel import ring as R

    p, r = comm.size, comm.rank
    seg = kb or R.piece_bytes_for(buf.nbytes)
    off, mine, peers, maxc = R._direct_plan(buf.size, p, r, max(1, int(seg) // buf.itemsize))
    a = off[r]
    inbox = R._scratch("direct_rs", p * maxc, buf.dtype).reshape(p, maxc)
    rs_recvs = {j: [comm.irecv(inbox[j, x - a:y - a], j, R._TAG_RS) for x, y in mine] for j, _ in peers}
    pending = [(comm.isend(buf[x:y], j, R._TAG_RS), j, x, y) for j, segs in peers for x, y in segs]
    ag_recvs, done_sends = [], []
    MPI = comm._MPI

    def post_ready(block):
        nonlocal pending
        left = []
        for rq, j, x, y in pending:
            if block:
                comm.wait(rq)
            if block or rq.Test():
                ag_recvs.append(comm.irecv(buf[x:y], j, R._TAG_AG))
            else:
                left.append((rq, j, x, y))
        pending = left

    sends = []
    for i, (x, y) in enumerate(mine):
        acc = buf[x:y]
        for j in R._peers(p, r):
            comm.wait(rs_recvs[j][i])
            np.add(acc, inbox[j, x - a:y - a], out=acc)
        sends += [comm.isend(acc, j, R._TAG_AG) for j, _ in peers]
        post_ready(False)
    post_ready(True)
    comm.waitall(ag_recvs)
    comm.waitall(sends)
    return buf


def V_dold(comm, buf, kb):
    """direct_allreduce with its all-gather in a scratch buffer copied in at the end at every size (as
    before main's in-place all-gather from the rendezvous size on)."""
    from fasttrain.parallel import ring as R

    saved, R.RENDEZVOUS_BYTES = R.RENDEZVOUS_BYTES, 1 << 62
    try:
        return R.direct_allreduce(comm, buf, segment_bytes=kb)
    finally:
        R.RENDEZVOUS_BYTES = saved


def V_oldauto(comm, buf, kb):
    """ring_allreduce as it dispatched before the per-layout plans: the checks, verify_layout,
    allreduce_algorithm with the call counted, then the pick through hierarchical_allreduce & co."""
    from fasttrain.parallel import ring as R

    return R._run_algorithm(comm, buf, "sum", _old_dispatch(comm, buf), R.DEFAULT_SEGMENT_BYTES, R.DEFAULT_SHARED_BYTES)


def _old_dispatch(comm, buf) -> str:
    """The algorithm ring_allreduce picked before the per-layout plans, by the same steps: the checks,
    verify_layout, allreduce_algorithm with the call counted."""
    from fasttrain.parallel import ring as R

    R._check_buf(buf)
    R._check_schedule("once")
    R.get_codec(None)
    R.verify_layout(comm, (buf.size, buf.dtype.str, "sum", None, None, R.DEFAULT_SEGMENT_BYTES, R.DEFAULT_SMALL_BYTES,
                           R.DEFAULT_SHARED_BYTES, R.DEFAULT_MID_BYTES))
    return R.allreduce_algorithm(comm, buf.nbytes, R.DEFAULT_SMALL_BYTES, R.DEFAULT_SHARED_BYTES, R.DEFAULT_MID_BYTES,
                                 count=True)


def V_before(comm, buf, kb):
    """ring_allreduce as main had it before session 12 (74b8bc8), as near as one job allows: the old
    dispatch (`V_oldauto`), the 2-host hierarchy's old form (`V_hold`), direct's all-gather through scratch."""
    from fasttrain.parallel import ring as R

    alg = _old_dispatch(comm, buf)
    if alg == "hierarchical":
        h = R.hierarchy(comm)
        if h.equal and h.slices.size == 2:
            return V_hold(comm, buf, kb)
    saved, R.RENDEZVOUS_BYTES = R.RENDEZVOUS_BYTES, 1 << 62
    try:
        return R._run_algorithm(comm, buf, "sum", alg, R.DEFAULT_SEGMENT_BYTES, R.DEFAULT_SHARED_BYTES)
    finally:
        R.RENDEZVOUS_BYTES = saved


def _poke_all(comm, sends, recvs):
    """Let MPI move every posted message: a Testall of the sends, and of the receives (which completes
    none of them unless all have arrived: it only drains the sockets into the posted buffers)."""
    T = comm._MPI.Request.Testall
    if sends:
        T(sends)
    T(recvs)


def V_hprog(comm, buf, kb):
    """The 2-host pipelined hierarchy with its waits in the host (`_await`'s progress) testing the
    cross-host receives too, not only the sends: data the other host sent early drains into the
    posted buffers while this rank waits for its host peer (the main form's progress is a no-op
    before its first send)."""
    import functools
    from fasttrain.parallel import ring as R

    h = R.hierarchy(comm)
    w, other = h.window, h.slices
    s = w.stream(buf, R._two_host_piece(buf.size, buf.itemsize, w.size, kb or R.DEFAULT_SEGMENT_BYTES))
    for i in range(s.rounds):
        s.copy_in(i)
    peer = 1 - other.rank
    pieces = s.pieces
    inbox = R._scratch("hier_inbox", pieces[-1][1] if pieces else 0, buf.dtype)
    recvs = [other.irecv(inbox[x:y], peer, R._TAG_RS) for x, y in pieces]
    sends = []
    progress = functools.partial(_poke_all, other, sends, recvs)
    for i in range(len(pieces)):
        sends.append(other.isend(s.reduce(i, progress), peer, R._TAG_RS))
    first = other.rank == 0
    for i, ((x, y), rq, sq) in enumerate(zip(pieces, recvs, sends)):
        other.wait(rq)
        other.wait(sq)
        mine, theirs = s.result(i), inbox[x:y]
        if first:
            np.add(mine, theirs, out=mine)
        else:
            np.add(theirs, mine, out=mine)
        s.done(i)
        if i + 1 < len(pieces):
            s.collect(False)
    s.collect(True, progress)
    return buf


_HPERS: dict = {}


def V_hpers(comm, buf, kb, yielding=False, poke=False):
    """The 2-host pipelined hierarchy with its cross-host messages from persistent requests, one set per
    buffer and slot half (the stream alternates halves, so each half's result pieces get their own
    sends); yielding: its MPI waits yield the core after 32 tests (V_hy); poke: its waits in the host
    test the receives too (V_hprog)."""
    import functools
    from fasttrain.parallel import ring as R

    h = R.hierarchy(comm)
    w, other = h.window, h.slices
    s = w.stream(buf, R._two_host_piece(buf.size, buf.itemsize, w.size, kb or R.DEFAULT_SEGMENT_BYTES))
    for i in range(s.rounds):
        s.copy_in(i)
    pieces = s.pieces
    key = (id(other), buf.ctypes.data, buf.size, s.mine.ctypes.data, len(pieces))
    plan = _HPERS.get(key)
    if plan is None:
        raw, peer = other.comm, 1 - other.rank
        inbox = np.empty(pieces[-1][1] if pieces else 0, buf.dtype)
        plan = _HPERS[key] = (buf, inbox, [raw.Recv_init(inbox[x:y], peer, R._TAG_RS) for x, y in pieces],
                              [raw.Send_init(s.result(i), peer, R._TAG_RS) for i in range(len(pieces))])
    _, inbox, recvs, sends = plan
    MPI = other._MPI
    MPI.Prequest.Startall(recvs)
    started = []
    progress = functools.partial(_poke_all, other, started, recvs) if poke else functools.partial(R._test_all, other, started)
    for i in range(len(pieces)):
        s.reduce(i, progress)
        sends[i].Start()
        started.append(sends[i])
    first = other.rank == 0
    wait = (lambda q: _yield_wait(q, 32)) if yielding else MPI.Request.Wait
    for i, ((x, y), rq, sq) in enumerate(zip(pieces, recvs, sends)):
        wait(rq)
        wait(sq)
        mine, theirs = s.result(i), inbox[x:y]
        if first:
            np.add(mine, theirs, out=mine)
        else:
            np.add(theirs, mine, out=mine)
        s.done(i)
        if i + 1 < len(pieces):
            s.collect(False)
    s.collect(True)
    return buf


def V_hpy(comm, buf, kb):
    return V_hpers(comm, buf, kb, yielding=True)


def V_hpp(comm, buf, kb):
    return V_hpers(comm, buf, kb, poke=True)


def _spinning(fn):
    """fn() with the MPI waits of ring.py spinning in MPI_Wait (WAIT_SPINS = None: main before session 15)."""
    from fasttrain.parallel import ring as R

    saved, R.WAIT_SPINS = R.WAIT_SPINS, None
    try:
        return fn()
    finally:
        R.WAIT_SPINS = saved


def V_hierny(comm, buf, kb):
    from fasttrain.parallel import ring as R

    h = R.hierarchy(comm)
    return _spinning(lambda: R._hierarchical_two_hosts(h, buf, "sum", comm.size, R.DEFAULT_SEGMENT_BYTES))


def V_directny(comm, buf, kb):
    from fasttrain.parallel import ring as R

    return _spinning(lambda: R.direct_allreduce(comm, buf, segment_bytes=kb))


def V_ringny(comm, buf, kb):
    from fasttrain.parallel import ring as R

    return _spinning(lambda: R.plain_ring_allreduce(comm, buf, segment_bytes=kb or R.piece_bytes_for(buf.nbytes)))


def V_autony(comm, buf, kb):
    return _spinning(lambda: ring_allreduce(comm, buf))


def V_leader(comm, buf, kb):
    """The hierarchy in 'leader' mode: one rank a host sums the host's buffer (fenced window), all-reduces it
    across hosts (one TCP flow a direction, the host's other ranks waiting in the fence), shares the result."""
    from fasttrain.parallel import ring as R

    return R.hierarchical_allreduce(comm, buf, mode="leader")


def V_oneshotny(comm, buf, kb):
    from fasttrain.parallel import ring as R

    return _spinning(lambda: R.oneshot_allreduce(comm, buf, piece_bytes=kb))


def V_rootedny(comm, buf, kb):
    from fasttrain.parallel import ring as R

    return _spinning(lambda: R.rooted_allreduce(comm, buf, piece_bytes=kb))


def V_auto14(comm, buf, kb):
    """ring_allreduce as main had it at the end of session 14 (ba3546f): per-call direct, waits spinning in MPI_Wait."""
    return _spinning(lambda: _per_call_direct(lambda: ring_allreduce(comm, buf)))


def _per_call_direct(fn):
    """fn() with direct_allreduce's per-call requests (the ring keeps its persistent ones, as in session 14)."""
    from fasttrain.parallel import ring as R

    saved = R._persistent_direct
    R._persistent_direct = lambda comm, buf, op, seg: _per_call(lambda: R.direct_allreduce(comm, buf, op, seg * buf.itemsize))
    try:
        return fn()
    finally:
        R._persistent_direct = saved


def phases(comm, buf, reps: int = 41):
    """The 2-host hierarchy's phases, per rank, median ms: share (copy-in + fence), pipeline (reduce
    pieces, send, receive, add), finish (fence + copy-out)."""
    from fasttrain.parallel import ring as R

    h = R.hierarchy(comm)
    w, other = h.window, h.slices
    out = {"share": [], "pipe": [], "finish": [], "fence2": []}
    for _ in range(reps):
        comm.barrier()
        t0 = time.perf_counter()
        plan = w.share(buf)
        t1 = time.perf_counter()
        _, a, b = plan[:3]
        chunk = plan[0][a:b]
        peer = 1 - other.rank
        pieces = R._pieces(b - a, buf.itemsize, R.piece_bytes_for((b - a) * buf.itemsize))
        inbox = R._scratch("hier_inbox", b - a, buf.dtype)
        recvs = [other.irecv(inbox[x:y], peer, R._TAG_RS) for x, y in pieces]
        sends = [other.isend(w.reduce_piece(buf, plan, x, y), peer, R._TAG_RS) for x, y in pieces]
        for (x, y), rq, sq in zip(pieces, recvs, sends):
            other.wait(rq)
            other.wait(sq)
            mine, theirs = chunk[x:y], inbox[x:y]
            np.add(mine, theirs, out=mine) if other.rank == 0 else np.add(theirs, mine, out=mine)
        t2 = time.perf_counter()
        w._fence()
        t3 = time.perf_counter()
        for x, y, result in plan[4]:
            buf[x:y] = result
        t4 = time.perf_counter()
        out["share"].append(t1 - t0)
        out["pipe"].append(t2 - t1)
        out["fence2"].append(t3 - t2)
        out["finish"].append(t4 - t3)
    return {k: round(statistics.median(v) * 1e3, 3) for k, v in out.items()}


def child(args):
    comm = get_comm()
    r = comm.rank
    rng = np.random.default_rng(12345)
    for size in [int(s) for s in args.sizes.split(",")]:
        n = size // 4
        src = np.random.default_rng([r, n]).integers(-1000, 1000, n).astype(np.float32)
        buf = src.copy()
        names = args.names.split(",")
        fns = {x: variant(comm, x, buf) for x in names}
        setup = {}
        if any(x.startswith("mpi:") for x in names):  # MPICH's algorithms in this job, written outside the timed window
            from bench.mpich_algorithms import MpichAllreduce
            algs = MpichAllreduce()
            setup = {x: (lambda a=x[4:]: algs.set(a)) if x.startswith("mpi:") else (lambda: algs.set("auto"))
                     for x in names}
        for _ in range(70 if size < (1 << 20) else 2):  # past the measured picks' re-measurement at call 64
            ring_allreduce(comm, buf)
        want = src.copy()
        comm.allreduce_mpi(want)
        for name, fn in fns.items():  # exact on integers, on every rank
            if name.startswith("x"):
                continue
            if name in setup:
                setup[name]()
            np.copyto(buf, src)
            fn()
            if not np.array_equal(buf, want):
                raise AssertionError(f"size={size} {name}: not the exact sum (max err {np.max(np.abs(buf - want))})")
        rounds = max(5, args.rounds if size <= (1 << 20) else args.rounds // 3)
        samples = {x: [] for x in names}
        for i in range(rounds + 2):
            for name in rng.permutation(names):
                if name in setup:
                    setup[name]()
                np.copyto(buf, src)
                comm.barrier()
                t0 = time.perf_counter()
                fns[name]()
                dt = time.perf_counter() - t0
                slowest = max(comm.allgather(dt))
                if i >= 2:
                    samples[name].append(slowest)
        ph = phases(comm, buf) if args.phases else None
        ph_all = comm.allgather(ph)
        if r == 0:
            from fasttrain.parallel.ring import allreduce_algorithm
            from mpi4py import MPI
            print(json.dumps({"layout": args.layout, "rate": args.rate, "size": size, "load": load1(), "rounds": rounds,
                              "thread_level": MPI.Query_thread(),
                              "pick": allreduce_algorithm(comm, size), "mpich": args.mpich,
                              "ratio": {k: round(float(np.median(np.array(v) / np.array(samples[names[1]]))), 3)
                                        for k, v in samples.items()},
                              "ms": {k: [round(statistics.median(v) * 1e3, 3), round(float(np.quantile(v, 0.2)) * 1e3, 3),
                                         round(min(v) * 1e3, 3), round(float(np.quantile(v, 0.05)) * 1e3, 3)]
                                     for k, v in samples.items()}, "phases": ph_all if args.phases else None}), flush=True)


def parent(args):
    from fasttrain.parallel.cluster import Cluster

    for layout in args.layouts.split(","):
        hosts, per = (int(x) for x in layout.split("x"))
        for rate in args.rates.split(","):
            with Cluster(hosts, per, rate=rate) as c:
                load0 = load1()
                proc = c.run([sys.executable, "-m", "mpi4py", str(Path(__file__).resolve()), "--child", "--layout", layout,
                              "--rate", rate, "--sizes", args.sizes, "--rounds", str(args.rounds), "--names", args.names,
                              "--mpich", args.mpich] + (["--phases"] if args.phases else []),
                             timeout=1800, cwd=ROOT,
                             launcher=[] if args.mpich == "default" else ["-genv", "MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM", args.mpich])
                if proc.returncode != 0:
                    sys.exit(f"net_ab {layout} {rate}: failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
                for ln in proc.stdout.splitlines():
                    if ln.startswith("{"):
                        rec = json.loads(ln)
                        ms = "  ".join(f"{k} {v[0]:.3f}/{v[1]:.3f}/{v[3]:.3f}/{v[2]:.3f} ({rec['ratio'][k]:.2f})" for k, v in rec["ms"].items())
                        print(f"{layout} {rate} {rec['size'] >> 10} KB load {load0:.1f}-{rec['load']:.1f} "
                              f"MPI thread level {rec['thread_level']} "
                              f"pick {rec['pick']} (median/p20/p5/min ms (median per-round ratio to the first after mpi), {rec['rounds']} rounds): {ms}", flush=True)
                        if rec["phases"]:
                            print("   phases per rank:", rec["phases"], flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layouts", default="2x2")
    ap.add_argument("--rates", default="10gbit")
    ap.add_argument("--sizes", default=str(1 << 20))
    ap.add_argument("--rounds", type=int, default=61)
    ap.add_argument("--names", default="mpi,auto,hier")
    ap.add_argument("--mpich", default="default", help="MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM for 'mpi'")
    ap.add_argument("--phases", action="store_true")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--layout", default="")
    ap.add_argument("--rate", default="")
    args = ap.parse_args()
    if args.child or launched_world_size() > 1:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
