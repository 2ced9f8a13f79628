"""Data-parallel training: one code path for 1 process (LocalComm) and K ranks under mpirun.

What each piece does and why:
- `ShardedLoader`: every epoch's permutation comes from the shared (seed, epoch), so all ranks
  agree on it without communicating; rank r takes the r-th of K equal slices (the n % K examples
  left over go unused that epoch, different ones each epoch). Equal slices give every rank the
  same number of batches, so no rank waits in an all-reduce another rank never calls.
- `scaled_lr`: the linear scaling rule with gradual warmup (Goyal et al. 2017, "Accurate, Large
  Minibatch SGD"): K ranks x batch B is one step of batch KB, so lr -> K lr, reached by a linear
  warmup (default: one epoch) because the large lr is unstable at the start.
- `DataParallel`, a trainer policy (DESIGN.md convention 11):
  * start: parameters and BN buffers are broadcast from rank 0, then every rank's parameter
    hash is allgathered; a difference is an error naming each rank's hash.
  * with bucket_bytes > 0 (`--bucket-kb`): the gradient arena is cut into contiguous buckets and
    each one's ring all-reduce starts on a communication thread as soon as backward has produced
    every gradient in it (`bucket_schedule`), so communication overlaps the rest of backward.
  * after backward: the gradient arena is averaged, by our ring (optionally through a codec,
    with error feedback whose residual goes into checkpoints; compress_schedule 'once' encodes
    each reduced chunk once, 'hop' every reduce-scatter message too, see ring.ring_allreduce)
    or MPI's Allreduce.
  * local SGD (--local-sgd H): no gradient all-reduce; the parameter arena and the BN running
    statistics are averaged every H steps (after every step for the first local_sgd_warmup
    steps: post-local SGD, Lin et al. 2020) and at every epoch end, so validation and
    checkpoints see the averaged model. Optimizer state stays per rank unless
    average_optimizer_state (--local-sgd-optimizer): then its buffers (momentum, Adam's moments)
    are averaged with the parameters.
  * BatchNorm statistics stay per rank in synchronous mode: each rank normalizes its batch with
    its own batch statistics (as in Goyal et al. 2017, section 5.1) and keeps its own running
    averages; validation and checkpoints use rank 0's.
  * a `Fingerprint` before each collective (every `fingerprint_every` calls and at start) turns
    mismatched collectives into a clear error instead of a hang.
- `run_guarded`: an exception on any rank is printed with the rank and ends the whole job
  (MPI_Abort), as `python -m mpi4py` does for scripts.
"""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback

import numpy as np

from ..train.checkpoint import module_buffers
from .codecs import ErrorFeedback, get_codec
from .comm import Communicator, LocalComm, launched_world_size
from .fingerprint import Fingerprint, array_digest
from .local_sgd import LocalSGD
from ..nn.module import Sequential
from .watchdog import Watchdog, watched
from .ring import DEFAULT_SEGMENT_BYTES, SCHEDULES, BucketedAllreduce, allreduce_algorithm, ring_allreduce, wire_bytes

BACKENDS = ("ring", "mpi")
CODECS = ("none", "fp16", "bf16", "int8", "int4", "sign")


class ShardedLoader:
    """Rank `rank`'s shard of a DataLoader: the epoch's shared permutation cut into `size` equal
    slices. Same interface as DataLoader for the trainer (len, batches(epoch, start))."""

    def __init__(self, loader, rank: int, size: int):
        if not 0 <= rank < size:
            raise ValueError(f"ShardedLoader(rank={rank}, size={size}): expected 0 <= rank < size")
        per = len(loader.x) // size
        if per == 0:
            raise ValueError(f"ShardedLoader: {len(loader.x)} examples cannot be split over {size} ranks")
        self.loader, self.rank, self.size, self.per_rank = loader, rank, size, per
        self.batch_size = loader.batch_size

    def __len__(self) -> int:
        bs = self.loader.batch_size
        return self.per_rank // bs if self.loader.drop_last else -(-self.per_rank // bs)

    def indices(self, epoch: int) -> np.ndarray:
        order = self.loader.order(epoch)
        return order[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]

    def batches(self, epoch: int, start: int = 0):
        idx = self.indices(epoch)
        bs = self.loader.batch_size
        for k in range(start, len(self)):
            yield self.loader._batch(idx[k * bs:(k + 1) * bs])


def bucket_schedule(model, arena, bounds) -> dict[int, list[int]]:
    """Top-level layer index of a Sequential model -> the buckets (arena ranges `bounds`) whose
    gradients are complete once that layer's backward has run. Backward runs from the last layer
    to the first, so a bucket is complete after the lowest-indexed layer owning a parameter that
    overlaps it; a bucket no parameter overlaps is ready at once (the last layer's entry)."""
    # _params directly: parameters() on a child would rename its parameters relative to the child
    owner = {id(p): li for li, (_, layer) in enumerate(model._children)
             for _, m in layer.named_modules() for p in m._params.values()}
    spans = []
    for p, off in zip(arena.params, arena.offsets):
        if id(p) not in owner:
            raise ValueError(f"bucket_schedule: parameter {p.name} belongs to no top-level layer of the model")
        spans.append((int(off), int(off) + p.size, owner[id(p)]))
    last = len(model._children) - 1
    plan: dict[int, list[int]] = {li: [] for li in range(last + 1)}
    for i, (a, b) in enumerate(bounds):
        plan[min((li for s, e, li in spans if s < b and e > a), default=last)].append(i)
    return plan


def check_options(backend: str = "ring", compress: str = "none", compress_schedule: str = "once",
                  local_sgd: int = 0, local_sgd_warmup: int = 0, bucket_bytes: int = 0,
                  average_optimizer_state: bool = False, has_optimizer: bool = True) -> None:
    """Raise ValueError, naming the options, for a combination DataParallel cannot run; the CLI
    calls it with the config before anything is built, DataParallel again with its arguments."""
    if backend not in BACKENDS:
        raise ValueError(f"dist: expected one of {BACKENDS}, got {backend!r}")
    if compress not in CODECS:
        raise ValueError(f"compress: expected one of {CODECS}, got {compress!r}")
    if compress_schedule not in SCHEDULES:
        raise ValueError(f"compress_schedule: expected one of {SCHEDULES}, got {compress_schedule!r}")
    if backend == "mpi" and compress != "none":
        raise ValueError(f"compress={compress!r} with dist='mpi': codecs travel on our ring only; use --dist ring")
    if int(local_sgd) < 0 or int(local_sgd_warmup) < 0:
        raise ValueError(f"local_sgd={local_sgd}, local_sgd_warmup={local_sgd_warmup}: expected integers >= 0")
    if local_sgd and compress != "none":
        raise ValueError(f"compress={compress!r} with local_sgd={local_sgd}: local SGD averages parameters "
                         "uncompressed; drop one of the two")
    if average_optimizer_state and (not local_sgd or not has_optimizer):
        raise ValueError(f"average_optimizer_state=True: averages the optimizer's state at local SGD syncs; "
                         f"expected local_sgd > 0 and an optimizer, got local_sgd={local_sgd}"
                         f"{'' if has_optimizer else ' and no optimizer'}")
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, (int, np.integer)) or bucket_bytes < 0:
        raise ValueError(f"bucket_bytes: expected an integer >= 0 (0: one all-reduce after backward), got {bucket_bytes!r}")
    if bucket_bytes and (backend != "ring" or local_sgd):
        raise ValueError(f"bucket_bytes={bucket_bytes} (overlap of the all-reduce with backward) needs dist='ring' "
                         f"without local SGD, got dist={backend!r}, local_sgd={local_sgd}")


#: config keys that only mean something with dist != 'none', and their defaults
DIST_ONLY_DEFAULTS = {"compress": "none", "compress_schedule": "once", "error_feedback": None, "bucket_kb": 0,
                      "local_sgd": 0, "local_sgd_warmup": 0, "local_sgd_optimizer": False,
                      "collective_timeout": 300.0}


def scaled_lr(lr: float, world: int, warmup_steps: int, steps_per_epoch: int, enabled: bool = True):
    """(lr, warmup_steps) after the linear scaling rule: lr x world, and when the caller asked for
    no warmup, one epoch of it (Goyal et al. use 5 of 90 epochs; our runs are short)."""
    if not enabled or world == 1:
        return lr, warmup_steps
    return lr * world, warmup_steps if warmup_steps > 0 else steps_per_epoch


class DataParallel:
    """The distributed part of a training step; see the module docstring. Hooks for the Trainer:
    setup() once, after_backward(step) and after_step(step) each step, end_epoch() before
    validation, finish() at the end; state_dict()/load_state_dict() ride in checkpoints."""

    def __init__(self, comm: Communicator, model, arena, backend: str = "ring", compress: str = "none",
                 error_feedback: bool | None = None, local_sgd: int = 0, local_sgd_warmup: int = 0,
                 fingerprint_every: int = 100, seed: int = 0, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 compress_schedule: str = "once", bucket_bytes: int = 0, optimizer=None,
                 average_optimizer_state: bool = False, collective_timeout: float = 300.0):
        check_options(backend, compress, compress_schedule, local_sgd, local_sgd_warmup, bucket_bytes,
                      average_optimizer_state, has_optimizer=optimizer is not None)
        if bucket_bytes and (not isinstance(model, Sequential) or type(model).backward is not Sequential.backward):
            raise ValueError(f"bucket_bytes={bucket_bytes}: overlapping the all-reduce with backward runs the layers of a "
                             f"Sequential model one by one; got a {type(model).__name__}")
        if not isinstance(arena.grad, np.ndarray):
            raise ValueError(f"DataParallel: expected a host (NumPy) arena, got {type(arena.grad).__name__}")
        self.comm, self.model, self.arena = comm, model, arena
        self.backend, self.compress, self.compress_schedule = backend, compress, compress_schedule
        if error_feedback is None:  # biased or coarse codecs need it (Karimireddy et al. 2019)
            error_feedback = compress in ("sign", "int4")
        self.error_feedback = bool(error_feedback) and compress != "none"
        codec = get_codec(compress)
        self.codec = ErrorFeedback(codec, arena.size) if self.error_feedback else codec
        self.segment_bytes = segment_bytes
        self.seed = seed
        self.local = (LocalSGD(comm, arena, int(local_sgd), int(local_sgd_warmup), segment_bytes=segment_bytes)
                      if local_sgd else None)
        self.optimizer, self.average_optimizer_state = optimizer, bool(average_optimizer_state)
        self.bucket_bytes = int(bucket_bytes)
        self._buckets: BucketedAllreduce | None = None  # made in setup(): its thread needs the world
        self._bucket_plan: dict[int, list[int]] = {}
        self.fingerprint = Fingerprint(comm, fingerprint_every)
        self.bytes_sent = 0
        self.allreduces = 0
        self._last_sync = 0
        self._gathered_residual = None
        self.hosts = [socket.gethostname()]  # every rank's host name, gathered in setup()
        self.algorithm = ""  # known after setup()
        if not collective_timeout >= 0:
            raise ValueError(f"collective_timeout: expected seconds >= 0 (0: no watchdog), got {collective_timeout!r}")
        self.collective_timeout = float(collective_timeout)
        self.watchdog: Watchdog | None = None  # made in setup(): collective

    def rng(self, step: int) -> np.random.Generator:
        """The stochastic rounding source of a step on this rank: a pure function of (seed, rank,
        step), so a run resumed from a checkpoint rounds as the uninterrupted run did."""
        return np.random.default_rng([self.seed, self.comm.rank, 0x5EED, step])

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def size(self) -> int:
        return self.comm.size

    def describe(self) -> str:
        mode = (f"local SGD H={self.local.H} (sync first {self.local.warmup} steps)" if self.local
                else f"{self.backend} all-reduce, codec {self.compress}{' + error feedback' if self.error_feedback else ''}"
                     f"{f' (quantized {self.compress_schedule})' if self.compress != 'none' else ''}"
                     f"{f', {self.bucket_bytes >> 10} KB buckets overlapping backward' if self.bucket_bytes else ''}")
        hosts = len(set(self.hosts))
        return (f"data parallel over {self.size} rank(s){f' on {hosts} hosts' if hosts > 1 else ''}: {mode}"
                + (f"; all-reduce algorithm {self.algorithm}" if self.algorithm else ""))

    def _algorithm(self) -> str:
        """How the gradients (local SGD: the parameters) are all-reduced: 'mpi', 'ring+CODEC',
        or what ring_allreduce picks for the arena's (or a bucket's) size and the ranks' placement.
        Collective (the first ask of a communicator's placement is)."""
        if self.backend == "mpi" and self.local is None:
            return "mpi"
        if self.codec is not None and self.local is None:
            # over hosts of several ranks a codec always takes the hierarchy (coded across hosts), whichever
            # of the hierarchical ways the uncompressed all-reduce measured fastest
            coded = allreduce_algorithm(self.comm, self.arena.grad.nbytes)
            return f"{'hierarchical' if coded in ('hierarchical', 'onefence') else 'ring'}+{self.compress}"
        if self.size == 1:
            return "none"
        nbytes = self.arena.data.nbytes
        if self.bucket_bytes and self.local is None:
            nbytes = min(nbytes, self.bucket_bytes)
        return allreduce_algorithm(self.comm, nbytes)

    # -- helpers ---------------------------------------------------------------------------------
    def _buffers(self) -> list[np.ndarray]:
        """BN running statistics (float arrays), looked up each time: a resume replaces them."""
        return [m.buffers[name] for _, (m, name) in sorted(module_buffers(self.model).items())
                if np.asarray(m.buffers[name]).dtype.kind == "f"]

    def _layout(self) -> str:
        return array_digest(np.frombuffer(repr([(p.name, p.shape) for p in self.arena.params]).encode(), np.uint8))

    def _wire(self, n: int, codec=None) -> int:
        # MPI's own algorithm is not visible: count what a ring would send (the lower bound)
        return wire_bytes(n, self.size, 4, codec, self.rank, self.compress_schedule, self.segment_bytes)

    # -- start ------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Broadcast parameters and BN buffers from rank 0, then verify every rank holds them."""
        if self.size > 1:
            self.watchdog = Watchdog(self.comm, self.collective_timeout)
            self.hosts = self.watchdog.hosts
            self.fingerprint.watchdog = self.watchdog
        self.fingerprint.check("broadcast_params", self.arena.size, self.arena.data.dtype,
                               f"layout {self._layout()}, {self.describe()}", force=True)
        if self.size > 1:
            with watched(self.watchdog, "broadcast", "parameters and BN statistics"):
                self.arena.data[...] = self.comm.bcast(self.arena.data if self.rank == 0 else None, root=0)
                for buf in self._buffers():
                    buf[...] = self.comm.bcast(buf if self.rank == 0 else None, root=0)
        self.verify_identical("the broadcast from rank 0")
        with watched(self.watchdog, "placement query"):
            self.algorithm = self._algorithm()
        if self.bucket_bytes and self.size > 1:
            self._buckets = BucketedAllreduce(self.comm, self.arena.grad, self.bucket_bytes, op="mean", codec=self.codec,
                                              segment_bytes=self.segment_bytes, schedule=self.compress_schedule,
                                              watchdog=self.watchdog)
            self._bucket_plan = bucket_schedule(self.model, self.arena, self._buckets.bounds)
            self._bucket_wire = sum(self._wire(b - a, self.codec) for a, b in self._buckets.bounds)

    def verify_identical(self, when: str) -> str:
        """Allgather a hash of the parameter arena; raise if ranks differ. Returns the hash."""
        mine = array_digest(self.arena.data)
        with watched(self.watchdog, "parameter hash check", when):
            hashes = self.comm.allgather(mine)
        if any(h != hashes[0] for h in hashes):
            listing = ", ".join(f"rank {r}: {h}" for r, h in enumerate(hashes))
            raise RuntimeError(f"parameters differ across ranks after {when} ({listing}); expected one hash on "
                               "every rank: a rank diverged (non-deterministic kernel, different data type or code)")
        return mine

    # -- per step ---------------------------------------------------------------------------------
    def backward(self, model, dy, step: int) -> None:
        """model.backward(dy), then the gradient average (`after_backward`). With buckets, the
        layers' backward runs one by one and each bucket's all-reduce starts as soon as its
        gradients are complete; after_backward then waits for the last of them."""
        start = self.bucket_starter(step)
        if start is None:
            model.backward(dy)
        else:   # through Sequential.backward, which also undoes the forward's layout conversions
            model.backward(dy, after_child=start)
        self.after_backward(step)

    def bucket_starter(self, step: int):
        """None without buckets; else a function of a top-level layer's index, to call right after
        that layer's last backward of the step: it starts the all-reduce of every bucket the layer
        completed (a pipeline stage calls it during its last micro-batch's backward, when its
        gradients become final). after_backward waits for them."""
        if self._buckets is None:
            return None
        g = self.arena.grad
        self.fingerprint.check("allreduce_grad_buckets", g.size, g.dtype,
                               f"{self.backend}/{self.compress}/{self.compress_schedule}/{len(self._buckets)}", step=step)
        self._buckets.rng = self.rng(step)

        def start(li: int) -> None:
            for b in self._bucket_plan[li]:
                self._buckets.start(b)
        return start

    def after_backward(self, step: int) -> None:
        """Average the gradient arena (synchronous mode); with buckets, wait for them."""
        if self.local is not None or self.size == 1:
            return
        if self._buckets is not None:
            self._buckets.wait()
            self.bytes_sent += self._bucket_wire
            self.allreduces += 1
            return
        g = self.arena.grad
        self.fingerprint.check("allreduce_grad", g.size, g.dtype,
                               f"{self.backend}/{self.compress}/{self.compress_schedule}", step=step)
        with watched(self.watchdog, "all-reduce", f"gradients, step {step}"):
            if self.backend == "mpi":
                self.comm.allreduce_mpi(g, op="mean")
            else:
                ring_allreduce(self.comm, g, op="mean", segment_bytes=self.segment_bytes, codec=self.codec,
                               rng=self.rng(step), schedule=self.compress_schedule)
        self.bytes_sent += self._wire(g.size, None if self.backend == "mpi" else self.codec)
        self.allreduces += 1

    def after_step(self, step: int) -> None:
        """Local SGD: average parameters (and BN statistics) on sync steps. step: steps taken."""
        if self.local is not None and self.local.should_sync(step):
            self._average(step)

    def _average(self, step: int) -> None:
        self.local.extra = self._buffers()
        if self.average_optimizer_state:  # momenta / moments join the BN statistics' packed all-reduce
            self.local.extra += [v for _, v in sorted(self.optimizer.state.items())]
        n_extra = sum(e.size for e in self.local.extra)
        self.fingerprint.check("average_params", self.arena.size + n_extra, self.arena.data.dtype, f"H={self.local.H}",
                               step=step)
        with watched(self.watchdog, "all-reduce", f"parameter average, step {step}"):
            self.local.average()
        if self.size > 1:
            self.bytes_sent += self._wire(self.arena.size) + (self._wire(n_extra) if n_extra else 0)
            self.allreduces += 1 + bool(n_extra)
        self._last_sync = step

    def end_epoch(self, step: int) -> None:
        """Before validation and checkpoint: local SGD averages (if the last step did not), the
        error-feedback residuals are gathered to rank 0 for the checkpoint."""
        if self.local is not None and self._last_sync != step:
            self._average(step)
        if isinstance(self.codec, ErrorFeedback) and self.size > 1:
            self.fingerprint.check("gather_residual", self.codec.residual.size, np.float32, step=step, force=True)
            with watched(self.watchdog, "gather", "error-feedback residuals"):
                parts = self.comm.allgather(self.codec.residual.copy())
            self._gathered_residual = np.stack(parts) if self.rank == 0 else None
        elif isinstance(self.codec, ErrorFeedback):
            self._gathered_residual = self.codec.residual[None].copy()

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision (it alone validates, e.g. early stopping) on every rank."""
        if self.size == 1:
            return bool(flag)
        with watched(self.watchdog, "broadcast", "rank 0's decision"):
            return bool(self.comm.bcast(bool(flag), root=0))

    def finish(self, broadcast: bool = False) -> str:
        """At the end of training every rank must hold the same parameters; returns their hash.
        broadcast=True first copies rank 0's (when rank 0 alone restored its best epoch)."""
        if self._buckets is not None:
            self._buckets.close()
            self._buckets = None
        if broadcast and self.size > 1:
            with watched(self.watchdog, "broadcast", "rank 0's best parameters"):
                self.arena.data[...] = self.comm.bcast(self.arena.data if self.rank == 0 else None, root=0)
        digest = self.verify_identical("training")
        if self.watchdog is not None:
            self.watchdog.close()
        return digest

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Arrays for rank 0's checkpoint: every rank's error-feedback residual, (K, n)."""
        if self._gathered_residual is None:
            return {}
        return {"ef_residual": self._gathered_residual}

    def load_state_dict(self, state: dict) -> None:
        res = state.get("ef_residual")
        if res is None or not isinstance(self.codec, ErrorFeedback):
            return
        if res.shape != (self.size, self.arena.size):
            raise ValueError(f"checkpoint ef_residual: expected shape ({self.size}, {self.arena.size}) for "
                             f"{self.size} ranks, got {res.shape}; resume with the same number of ranks")
        self.codec.load_state_dict({"residual": res[self.rank]})


def world_comm(dist: str, pipeline_stages: int = 1) -> Communicator:
    """The communicator a run with config key `dist` uses: MPI when launched with K > 1 ranks,
    LocalComm otherwise (so `--dist ring` without mpirun runs the same code on one rank). K ranks
    that are the stages of one pipeline need no dist."""
    from .comm import get_comm

    k = launched_world_size()
    if k > 1 and dist == "none" and k != pipeline_stages:
        raise ValueError(f"dist='none' but the job was launched with {k} ranks: pass --dist ring or --dist mpi "
                         "(otherwise every rank would train its own copy)")
    return get_comm() if k > 1 else LocalComm()


def run_guarded(fn, diverged_code: int = 2):
    """fn() under mpirun: an exception on this rank is printed with the rank and aborts the whole
    job (MPI_Abort), so peers blocked in a collective do not hang. Without mpirun: just fn()."""
    k = launched_world_size()
    if k <= 1:
        return fn()
    try:
        return fn()
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        code = exc.code if isinstance(exc.code, int) else 1
        message = str(exc.code)
    except BaseException as exc:  # noqa: BLE001 - reported, then the job is aborted
        from ..train import TrainingDiverged

        code = diverged_code if isinstance(exc, TrainingDiverged) else 1
        message = f"{type(exc).__name__}: {exc}"
        from ..settings import debug

        if debug():  # otherwise the one line below, written whole so ranks' lines do not interleave
            traceback.print_exc(file=sys.stderr)
    from mpi4py import MPI

    rank = MPI.COMM_WORLD.Get_rank()
    sys.stderr.flush()
    os.write(2, f"fasttrain: error: rank {rank} of {k} (host {socket.gethostname()}) failed, aborting the job: "
                f"{' '.join(message.split())}\n".encode())
    sys.stdout.flush()
    # the launcher forwards our output through its proxies; an immediate abort can tear the job
    # down before the message above got out (seen as a rare missing message under load)
    time.sleep(0.2)
    try:
        MPI.COMM_WORLD.Abort(code)
    finally:
        # MPI_Abort may return while the launcher tears the job down; returning from here would
        # let the caller go on with no result (a stray traceback in the last moments)
        os._exit(code)
