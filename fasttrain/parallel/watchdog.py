"""No hang, ever: a watchdog on the collectives of the data-parallel layer.

A rank that stops (SIGSTOP, a deadlock), dies (SIGKILL, an exit that skips a collective) or is
cut off (a link down) leaves its peers blocked inside MPI forever: MPI has no timeout, and a
killed process is reported by the launcher by process id at best. So every collective of the
data-parallel layer runs inside `Watchdog.collective(name, detail)`, which numbers it (the same
sequence on every rank: the program is the same) and notes the time it was entered.

A monitor thread on each rank notices when its rank has waited in one collective longer than
the timeout. It then asks every peer, over a side channel of UDP datagrams that does not go
through MPI (a blocked MPI cannot be asked anything), which collective it has entered last.
Peers answer from a listener thread, so a rank blocked inside MPI answers too; a stopped, dead
or unreachable one does not. Ranks that answered with an earlier collective, or did not answer,
are the missing ones: the rank prints one line naming them, their hosts, the collective and its
number, tells its peers (so every waiting rank prints its line), and aborts the job
(MPI_Abort; if even that cannot get through, the process exits). If every rank has entered the
collective, it is slow, not hung: the watchdog waits another timeout.

The side channel costs nothing per collective (a counter and a clock read); datagrams flow only
when a collective overruns the timeout.
"""
from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import threading
import time

from .comm import Communicator

_MAGIC = b"ftwd1"


def local_addresses() -> list[str]:
    """This host's IPv4 addresses other than loopback (Linux: every interface's; elsewhere the
    host name's)."""
    out = []
    try:
        import fcntl

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                try:
                    packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
                except OSError:
                    continue
                addr = socket.inet_ntoa(packed[20:24])
                if not addr.startswith("127.") and addr not in out:
                    out.append(addr)
    except (ImportError, OSError):
        pass
    if not out:
        try:
            out = [a for a in socket.gethostbyname_ex(socket.gethostname())[2] if not a.startswith("127.")]
        except OSError:
            pass
    return out


class Watchdog:
    """See the module docstring. Construction is collective (peers' addresses are allgathered);
    timeout_s <= 0 turns the watchdog off (collective() only counts)."""

    def __init__(self, comm: Communicator, timeout_s: float = 300.0, hosts: list[str] | None = None,
                 grace_s: float = 1.0, out=None):
        if not timeout_s >= 0:
            raise ValueError(f"collective_timeout: expected seconds >= 0 (0: no watchdog), got {timeout_s!r}")
        self.comm, self.timeout_s, self.grace_s = comm, float(timeout_s), float(grace_s)
        self.rank, self.size = comm.rank, comm.size
        self.entered = 0                 # number of the last collective this rank entered
        self.current = None              # (number, name, detail, monotonic time entered) while inside
        self.out = out or sys.stderr
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._reported = 0
        self.active = self.size > 1 and self.timeout_s > 0
        if not self.active:
            self.hosts = hosts or [socket.gethostname()] * self.size
            return
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.settimeout(0.5)
        me = (socket.gethostname(), local_addresses(), self.sock.getsockname()[1])
        peers = comm.allgather(me)
        self.hosts = [p[0] for p in peers]
        self.peers = {}
        for r, (host, addrs, port) in enumerate(peers):
            if r == self.rank:
                continue
            targets = [(a, port) for a in addrs]
            if host == me[0]:
                targets.insert(0, ("127.0.0.1", port))
            self.peers[r] = targets
        self._answers: dict[int, tuple[int, bool, str]] = {}
        self._query_id = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._listen, daemon=True, name="ft-watchdog-listen").start()
        threading.Thread(target=self._monitor, daemon=True, name="ft-watchdog").start()

    # -- the collectives ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def collective(self, name: str, detail: str = ""):
        """Run one collective under the watchdog (numbered; timed while inside)."""
        self.entered += 1
        self.current = (self.entered, name, detail, time.monotonic())
        try:
            yield self.entered
        finally:
            self.current = None

    def close(self) -> None:
        self._stop.set()
        self._wake.set()

    # -- side channel --------------------------------------------------------------------------------
    def _send(self, rank: int, payload: bytes) -> None:
        for addr in self.peers.get(rank, ()):
            try:
                self.sock.sendto(_MAGIC + payload, addr)
            except OSError:
                pass  # unreachable: it will count as no answer

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(512)
            except (socket.timeout, OSError):
                continue
            if not data.startswith(_MAGIC):
                continue
            kind, *fields = data[len(_MAGIC):].decode(errors="replace").split("\x1f")
            try:
                if kind == "Q" and int(fields[1]) == self.rank:      # query: id, to-rank, from-rank
                    cur = self.current
                    state = f"{self.entered}\x1f{int(cur is not None)}\x1f{cur[1] if cur else ''}"
                    self.sock.sendto(_MAGIC + f"A\x1f{fields[0]}\x1f{self.rank}\x1f{state}".encode(), addr)
                elif kind == "A":                                    # answer: id, rank, entered, inside, name
                    with self._lock:
                        if int(fields[0]) == self._query_id:
                            self._answers[int(fields[1])] = (int(fields[2]), fields[3] == "1", fields[4])
                elif kind == "T" and self.current is not None:       # a peer timed out: check at once
                    self._wake.set()
            except (IndexError, ValueError, OSError):
                continue

    def _query(self, wait_s: float = 1.0) -> dict[int, tuple[int, bool, str]]:
        """Every peer's (last collective entered, inside it?, its name); the silent are left out."""
        with self._lock:
            self._query_id += 1
            self._answers = {}
            qid = self._query_id
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                pending = [r for r in self.peers if r not in self._answers]
            if not pending or time.monotonic() >= deadline:
                break
            for r in pending:  # datagrams may be lost: ask again until the deadline
                self._send(r, f"Q\x1f{qid}\x1f{r}\x1f{self.rank}".encode())
            time.sleep(0.1)
        with self._lock:
            return dict(self._answers)

    # -- detection -----------------------------------------------------------------------------------
    def _monitor(self) -> None:
        poll = min(1.0, self.timeout_s / 4)
        while not self._stop.is_set():
            notified = self._wake.wait(poll)
            self._wake.clear()
            cur = self.current
            if cur is None or self._stop.is_set():
                continue
            seq, name, detail, t0 = cur
            waited = time.monotonic() - t0
            if (notified or waited >= self.timeout_s) and seq != self._reported:
                if self._check(seq, name, detail, waited):
                    return

    def missing(self, seq: int) -> list[tuple[int, str]]:
        """Peers that have not entered collective #seq: (rank, what is known of it)."""
        answers = self._query()
        out = []
        for r in sorted(self.peers):
            if r not in answers:
                out.append((r, "no answer: stopped, dead or unreachable"))
            elif answers[r][0] < seq:
                entered, inside, name = answers[r]
                out.append((r, f"{'in' if inside else 'past'} #{entered} {name}".rstrip()))
        return out

    def _check(self, seq, name, detail, waited) -> bool:
        missing = self.missing(seq)
        if self.current is None or self.current[0] != seq:
            return False  # the collective completed meanwhile
        if not missing:
            self.current = (seq, name, detail, time.monotonic())  # all arrived: slow, not hung
            return False
        self._reported = seq
        who = ", ".join(f"rank {r} (host {self.hosts[r]}; {state})" for r, state in missing)
        what = f"{name} #{seq}" + (f" ({detail})" if detail else "")
        self.out.write(f"fasttrain: rank {self.rank} (host {self.hosts[self.rank]}): {who} did not reach {what} "
                       f"within {self.timeout_s:g} s (waited {waited:.1f} s); aborting the job\n")
        self.out.flush()
        for r in self.peers:  # every waiting rank prints its own line before the abort
            self._send(r, b"T")
        time.sleep(self.grace_s)
        self.abort()
        return True

    def abort(self, code: int = 1) -> None:
        """MPI_Abort; if that has not ended this process within a few seconds (a launcher cut off
        from it), exit."""
        timer = threading.Timer(5.0, os._exit, args=(code,))
        timer.daemon = True
        timer.start()
        try:
            self.comm.abort(code)
        finally:
            os._exit(code)


def watched(watchdog: Watchdog | None, name: str, detail: str = ""):
    """watchdog.collective(name, detail), or a no-op without a watchdog."""
    return watchdog.collective(name, detail) if watchdog is not None else contextlib.nullcontext()
