"""Pipeline (model) parallelism: the layers of a Sequential cut into S contiguous stages, one
stage per rank, a batch cut into M micro-batches that flow through the stages.

Why and when (the lecture notes' model parallelism, "idea #1: run different layers on different
devices"): each rank holds only its stage's parameters, gradients and optimizer state, and sends
only the activations at its stage boundary forward and their gradients back, instead of the
whole gradient every step (data parallelism). Its problem is the one the notes name: "devices
spend lots of time waiting". Run naively (M = 1) stage s idles while the others compute. Cutting
the batch into M micro-batches (Huang et al., "GPipe", NeurIPS 2019) lets stage s work on
micro-batch m + 1 while stage s + 1 works on m; what stays idle is the fill and drain of the
pipeline, the bubble, a fraction (S - 1) / (M + S - 1) of the step when stages cost the same.

Schedules (one list of ops per stage, `schedule_ops`):
- 'gpipe': all M forwards, then all M backwards. Every stage holds the cached activations of
  all M micro-batches at the turn.
- '1f1b' (PipeDream-Flush, Narayanan et al., "Memory-Efficient Pipeline-Parallel DNN Training",
  ICML 2021): stage s runs S - s - 1 warm-up forwards, then alternates one forward, one backward,
  then drains. Same bubble, but stage s holds at most S - s micro-batches' activations.
Backwards run in micro-batch order in both, so gradients accumulate into the stage's arena in the
same order as a single process accumulating over the same micro-batches: the parameters after a
step are bit-identical to that (the S = 1 pipeline), and equal to one whole-batch step within
float32 reassociation (the micro-batch gradients are scaled by rows/N and summed; with M = 1 it
is the same arithmetic, bit for bit).

Semantics: BatchNorm normalizes each micro-batch with its own statistics and updates its running
averages once per micro-batch (as GPipe does); dropout masks are the whole batch's rows
(`nn.Dropout.rows`), keyed by the layer's path in the whole model (the stage's module holds its
layers under those paths), so they depend on neither the stage split nor M.

Communication: activations and gradients go by non-blocking point-to-point (Communicator.isend /
irecv, so ThreadComm runs the same code without MPI). The receive an op needs is posted one op
ahead, before the current op computes, so the transfer overlaps it; sends are waited when done
(MPI_Test) or at the end of the step. The first message of each micro-batch size on a link is
preceded by a shape header; after that only data flows.

Stage balance ('cost'): each top-level layer (a residual block is one layer) costs
6 x its multiply-adds per example (convolutions and linear layers: forward, backward-data and
backward-weight) + 10 x its output values per example (element-wise layers, bandwidth-bound)
+ 4 x its parameters (the optimizer's pass); shapes come from a 2-example forward of each layer
alone in eval mode. The cut minimizes the most expensive stage, and never puts a batchnorm at the
start of a stage when another cut exists: a batchnorm after a convolution in the same stage takes
its statistics from the convolution's epilogue on the blocked layout (nn/layout.py), while one
that starts a stage computes them itself from the received NCHW array, which rounds differently
(about 1 ulp), so only a cut elsewhere keeps a pipelined run bit-identical to one process.
A list of layer counts per stage overrides it.
"""
from __future__ import annotations

import time

import numpy as np

from ..arena import ParamArena
from ..nn.conv import Conv2d
from ..nn.dropout import Dropout
from ..nn.linear import Linear
from ..nn.module import Module, Sequential
from ..nn.norm import _BatchNorm
from ..train.checkpoint import module_buffers
from .comm import Communicator, _Done

SCHEDULES = ("gpipe", "1f1b")
_ACT, _GRAD = 0, 1                      # message kinds: activations forward, their gradients back
_TAGS = {_ACT: (301, 303), _GRAD: (302, 304)}   # (data tag, shape-header tag)
_MAX_NDIM = 8


def pipeline_layers(model) -> list[Module]:
    """The top-level layers of a Sequential model, or a ValueError saying why it cannot be cut."""
    if not isinstance(model, Sequential) or type(model).forward is not Sequential.forward \
            or type(model).backward is not Sequential.backward:
        raise ValueError(f"pipeline: expected a fasttrain.nn.Sequential model to cut into stages, got "
                         f"{type(model).__name__}")
    return [layer for _, layer in model._children]


def check_split(layers: int, stages: int, micro_batches: int, batch_size: int | None = None,
                parameterized: int | None = None) -> None:
    """One-line errors for a split that cannot run, before anything is built. parameterized: how
    many of the layers have parameters (every stage needs one: its optimizer steps an arena)."""
    for name, v in (("pipeline_stages", stages), ("micro_batches", micro_batches)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
    if stages > layers:
        raise ValueError(f"pipeline_stages={stages}: the model has {layers} top-level layers (a residual block "
                         f"counts as one); expected at most {layers} stages")
    if parameterized is not None and stages > parameterized:
        raise ValueError(f"pipeline_stages={stages}: only {parameterized} of the model's {layers} top-level layers have "
                         f"parameters, and every stage needs one; expected at most {parameterized} stages")
    if batch_size is not None and micro_batches > batch_size:
        raise ValueError(f"micro_batches={micro_batches}: a batch of {batch_size} examples cannot be cut into "
                         f"{micro_batches} non-empty micro-batches; expected micro_batches <= batch_size")


#: the pipeline's config keys and their defaults (a resumed run takes them from its launch)
PIPELINE_DEFAULTS = {"pipeline_stages": 1, "micro_batches": 1, "pipeline_schedule": "1f1b"}

def check_config(cfg) -> None:
    """The pipeline keys of a run config (fasttrain.config.Config), as one-line ValueErrors."""
    pipelined = cfg.pipeline_stages != 1 or cfg.micro_batches != 1
    for name, v in (("pipeline_stages", cfg.pipeline_stages), ("micro_batches", cfg.micro_batches)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
    if cfg.pipeline_schedule not in SCHEDULES:
        raise ValueError(f"pipeline_schedule: expected one of {SCHEDULES}, got {cfg.pipeline_schedule!r}")
    if not pipelined:
        if cfg.pipeline_schedule != "1f1b":
            raise ValueError(f"pipeline_schedule={cfg.pipeline_schedule!r}: a pipeline option, but pipeline_stages=1 "
                             "and micro_batches=1; expected --pipeline-stages S or --micro-batches M")
        return
    if cfg.micro_batches > cfg.batch_size:
        raise ValueError(f"micro_batches={cfg.micro_batches}: a batch of {cfg.batch_size} examples cannot be cut into "
                         f"{cfg.micro_batches} non-empty micro-batches; expected micro_batches <= batch_size")
    if cfg.device != "cpu":
        raise ValueError(f"device={cfg.device!r} with pipeline_stages={cfg.pipeline_stages}: stages exchange host "
                         "arrays; expected device='cpu'")
    from ..models import build

    layers = pipeline_layers(build(cfg.model, (3, 32, 32), 10, cfg.dropout))  # the count ignores the size
    check_split(len(layers), cfg.pipeline_stages, cfg.micro_batches, cfg.batch_size,
                sum(bool(_own_params(layer)) for layer in layers))


def schedule_ops(schedule: str, stages: int, stage: int, micro_batches: int) -> list[tuple[str, int]]:
    """Stage `stage`'s ops for one step: ('F', m) forward and ('B', m) backward of micro-batch m."""
    if schedule not in SCHEDULES:
        raise ValueError(f"pipeline_schedule: expected one of {SCHEDULES}, got {schedule!r}")
    M = micro_batches
    if schedule == "gpipe":
        return [("F", m) for m in range(M)] + [("B", m) for m in range(M)]
    warm = min(stages - stage - 1, M)
    ops = [("F", m) for m in range(warm)]
    for m in range(M - warm):
        ops += [("F", warm + m), ("B", m)]
    return ops + [("B", m) for m in range(M - warm, M)]


def micro_rows(n: int, micro_batches: int) -> list[tuple[int, int]]:
    """(first row, rows) of each micro-batch: the first n % M get one row more (np.array_split)."""
    base, extra = divmod(n, micro_batches)
    out, start = [], 0
    for m in range(micro_batches):
        rows = base + (m < extra)
        out.append((start, rows))
        start += rows
    return out


def partition(costs, stages: int, required=None, avoid_start=None) -> list[int]:
    """Layer counts of `stages` contiguous, non-empty stages minimizing the largest stage cost
    (dynamic programming over cut points; ties go to the earlier cut). required: a bool per layer;
    then every stage must hold at least one required layer (one with parameters). avoid_start: a
    bool per layer that should not begin a stage (a batchnorm: see the module docstring); the
    best split without such a start wins, and only if there is none the constraint is dropped."""
    L = len(costs)
    required = np.ones(L, bool) if required is None else np.asarray(required, bool)
    check_split(L, stages, 1, parameterized=int(required.sum()))
    if avoid_start is not None:
        avoid = np.asarray(avoid_start, bool)
        counts = _partition(costs, stages, required, avoid)
        if counts is not None:
            return counts
    return _partition(costs, stages, required, np.zeros(L, bool))


def _partition(costs, stages: int, required, avoid) -> list[int] | None:
    L = len(costs)
    prefix = np.concatenate([[0.0], np.cumsum(np.asarray(costs, np.float64))])
    has = np.concatenate([[0], np.cumsum(required)])   # required layers in [i, j): has[j] - has[i]
    inf = float("inf")
    best = np.full((stages + 1, L + 1), inf)
    cut = np.zeros((stages + 1, L + 1), np.int64)
    best[0, 0] = 0.0
    for s in range(1, stages + 1):
        for j in range(s, L + 1):
            for i in range(s - 1, j):
                if has[j] == has[i] or (i > 0 and avoid[i]):
                    continue
                v = max(best[s - 1, i], prefix[j] - prefix[i])
                if v < best[s, j]:
                    best[s, j], cut[s, j] = v, i
    if best[stages, L] == inf:
        return None
    counts, j = [], L
    for s in range(stages, 0, -1):
        i = int(cut[s, j])
        counts.append(j - i)
        j = i
    return counts[::-1]


def _own_params(module: Module) -> list:
    # _params directly: parameters() on a child renames its parameters relative to that child
    return [p for _, m in module.named_modules() for p in m._params.values()]


def layer_costs(layers: list[Module], input_shape, dtype=np.float32) -> list[float]:
    """The estimated cost of each layer (module docstring), from a 2-example forward of each layer
    alone in eval mode. Parameters not yet bound get a temporary zero arena for it, one layer at
    a time, so no rank ever holds the whole model's parameters."""
    x = np.zeros((2,) + tuple(int(d) for d in input_shape), dtype)
    costs = []
    for i, layer in enumerate(layers):
        params = _own_params(layer)
        temporary = params and params[0].data is None
        if temporary:
            ParamArena(params, dtype=dtype, init=False)
        modes = [(m, m.training) for _, m in layer.named_modules()]
        layer.eval()
        try:
            y = layer.forward(x)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"pipeline: probing layer {i} ({type(layer).__name__}) with input {x.shape} failed: "
                             f"{exc}") from None
        macs = 0
        for _, m in layer.named_modules():
            if isinstance(m, Conv2d):
                xin = m.cache[0]
                r, s = m.kernel_size
                (sh, sw), (ph, pw) = m.stride, m.padding
                p = (xin.shape[2] + 2 * ph - r) // sh + 1
                q = (xin.shape[3] + 2 * pw - s) // sw + 1
                macs += m.out_channels * p * q * m.in_channels * r * s
            elif isinstance(m, Linear):
                macs += m.in_features * m.out_features
        for m, mode in modes:
            m.training = mode
        layer.stash_cache(clear=True)
        if temporary:
            for p in params:
                p.data = p.grad = None
        costs.append(6.0 * macs + 10.0 * y[0].size + 4.0 * sum(p.size for p in params))
        x = y
    return costs


def _check_mean_loss(loss_fn, y) -> None:
    """Micro-batch m's loss weighs rows_m / N in the batch's: right for a mean over the rows, not
    for a weighted mean (class weights, ignored labels) or a sum."""
    weight, reduction = getattr(loss_fn, "weight", None), getattr(loss_fn, "reduction", "mean")
    ignore = getattr(loss_fn, "ignore_index", None)
    if weight is not None or reduction != "mean" or (ignore is not None and np.any(np.asarray(y) == ignore)):
        raise ValueError(f"Pipeline: the loss {type(loss_fn).__name__} is not a plain mean over the rows (weight="
                         f"{'given' if weight is not None else None}, reduction={reduction!r}, labels equal to "
                         f"ignore_index={ignore}); micro-batches weigh their losses by rows: expected a plain mean")


def _test(req) -> bool:
    """Whether a send request finished, without blocking: MPI_Test for MPI's, at once for
    ThreadComm's (its sends are copies); others (a wrapper's) are waited at the end of the step."""
    if isinstance(req, _Done):
        return True
    test = getattr(req, "Test", None)
    return bool(test()) if test is not None else False


def _nbytes(obj, seen: set) -> int:
    if isinstance(obj, np.ndarray):
        base = obj if obj.base is None else obj.base
        if id(base) in seen or not isinstance(base, np.ndarray):
            return 0
        seen.add(id(base))
        return base.nbytes
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o, seen) for o in obj)
    return 0


class Pipeline:
    """Stage `comm.rank` of a `comm.size`-stage pipeline over `model` (a Sequential).

    model: every rank builds the same model; parameters may be unbound (they are then
    initialized as ParamArena.for_model(model, seed) would, each rank keeping its stage's) or
    bound to a full arena (this rank's stage copies their values). input_shape: one example's
    shape, (C, H, W) or (F,), for the cost probe. balance: 'cost' or a list of layer counts.
    After construction: `arena` (this stage's parameters), `module` (a Sequential of its layers,
    the module optimizers, DataParallel and checkpoints see), `bounds` (first, stop) per stage."""

    def __init__(self, model, comm: Communicator, micro_batches: int = 1, schedule: str = "1f1b",
                 input_shape=None, balance="cost", seed: int = 0, dtype=np.float32):
        layers = pipeline_layers(model)
        S = comm.size
        check_split(len(layers), S, micro_batches, parameterized=sum(bool(_own_params(layer)) for layer in layers))
        if schedule not in SCHEDULES:
            raise ValueError(f"pipeline_schedule: expected one of {SCHEDULES}, got {schedule!r}")
        self.comm, self.model, self.stages, self.stage = comm, model, S, comm.rank
        self.micro_batches, self.schedule, self.dtype = int(micro_batches), schedule, np.dtype(dtype)
        all_params = model.parameters()   # names every parameter by its path in the whole model
        bound = [p.data is not None for p in all_params]
        if any(bound) and not all(bound):
            raise ValueError("Pipeline(model): some parameters are bound to an arena and some are not; expected "
                             "all (values are copied) or none (initialized from the seed)")
        if isinstance(balance, str):
            if balance != "cost":
                raise ValueError(f"Pipeline(balance): expected 'cost' or a list of layer counts, got {balance!r}")
            if input_shape is None:
                raise ValueError("Pipeline(input_shape): the 'cost' balance probes the layers; expected one "
                                 "example's shape, e.g. (3, 32, 32)")
            self.costs = layer_costs(layers, input_shape, self.dtype)
            counts = partition(self.costs, S, [bool(_own_params(layer)) for layer in layers],
                               [isinstance(layer, _BatchNorm) for layer in layers])
        else:
            counts = [int(c) for c in balance]
            if len(counts) != S or min(counts) < 1 or sum(counts) != len(layers):
                raise ValueError(f"Pipeline(balance): expected {S} layer counts >= 1 summing to {len(layers)}, "
                                 f"got {list(balance)}")
            self.costs = None
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
        self.bounds = [(int(starts[s]), int(starts[s + 1])) for s in range(S)]
        first, stop = self.bounds[self.stage]
        self.layers = layers[first:stop]
        # the stage's layers under their names in the whole model, so every path inside the stage
        # (parameter names, buffer keys, dropout keys) is the whole model's path
        self.module = Sequential()
        for name, layer in model._children[first:stop]:
            self.module.add_child(name, layer)
        self._counters = None   # the draw counters at train_step's start, while it runs
        mine = {id(p) for layer in self.layers for p in _own_params(layer)}
        self.params = [p for p in all_params if id(p) in mine]
        if not self.params:
            raise ValueError(f"pipeline stage {self.stage} (layers {first}..{stop - 1}) has no parameters; "
                             "give a balance that puts a parameterized layer in every stage")
        values = [np.array(p.data) for p in self.params] if all(bound) else None
        self.arena = ParamArena(self.params, dtype=self.dtype, init=False)
        if values is not None:
            for p, v in zip(self.params, values):
                p.data[...] = v
            for p in all_params:   # other stages' parameters: unbound, so the whole arena can go
                if id(p) not in mine:
                    p.data = p.grad = p.arena = None
        else:
            # the draws of ParamArena.initialize over the whole model, in forward order, so every
            # parameter gets the value a single process gives it; other stages' values are dropped
            rng = np.random.default_rng(seed)
            for p in all_params:
                v = np.asarray(p.init(p.shape, rng, np.float64), dtype=self.dtype)
                if id(p) in mine:
                    p.data[...] = v
        mods = {id(m) for layer in self.layers for _, m in layer.named_modules()}
        #: '<path in the whole model>.<name>' -> (module, name) of this stage's buffers
        self.buffers = {k: v for k, v in module_buffers(model).items() if id(v[0]) in mods}
        self._dropouts = [m for _, m in self.module.named_modules() if isinstance(m, Dropout)]
        self._shapes = {_ACT: {}, _GRAD: {}}        # rows -> shape received on each link
        self._header_pending = {_ACT: set(), _GRAD: set()}
        self._sent_shapes = {_ACT: set(), _GRAD: set()}
        self.peak_in_flight = 0          # most micro-batches forwarded but not yet backwarded, last step
        self.peak_activation_bytes = 0   # their caches, received inputs and unfinished sends, last step
        self.wait_s = 0.0                # seconds this stage waited for its peers, last step (its bubble)

    # -- description ----------------------------------------------------------------------------
    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.stages - 1

    def describe(self) -> str:
        cuts = ", ".join(f"{a}..{b - 1}" for a, b in self.bounds)
        if self.costs is not None:
            share = [sum(self.costs[a:b]) for a, b in self.bounds]
            cuts += f" (estimated cost shares {', '.join(f'{c / sum(share):.2f}' for c in share)})"
        bubble = (self.stages - 1) / (self.micro_batches + self.stages - 1)
        return (f"pipeline of {self.stages} stages (layers {cuts}), {self.micro_batches} micro-batches, "
                f"{self.schedule} (ideal bubble {bubble:.0%})")

    # -- messages -------------------------------------------------------------------------------
    def _peer(self, kind: int) -> int:
        return self.stage - 1 if kind == _ACT else self.stage + 1

    def _post(self, kind: int, m: int, force: bool = False) -> None:
        """Post the receive of micro-batch m's activation (kind _ACT) or gradient (_GRAD)."""
        if (kind, m) in self._recvs:
            return
        rows = self._rows[m][1]
        shape = self._shapes[kind].get(rows)
        tag, header_tag = _TAGS[kind]
        if shape is not None:
            buf = np.empty(shape, self.dtype)
            self._recvs[kind, m] = ("data", buf, self.comm.irecv(buf, self._peer(kind), tag))
        elif rows not in self._header_pending[kind]:
            header = np.zeros(_MAX_NDIM + 1, np.int64)
            self._recvs[kind, m] = ("header", header, self.comm.irecv(header, self._peer(kind), header_tag))
            self._header_pending[kind].add(rows)
        elif force:  # the earlier micro-batch of this size carries the header and was taken first
            raise RuntimeError(f"pipeline stage {self.stage}: micro-batch {m}'s shape is unknown")
        # else: posted later, once the earlier micro-batch's header told the shape

    def _take(self, kind: int, m: int) -> np.ndarray:
        if (kind, m) not in self._recvs:
            self._post(kind, m, force=True)
        what, buf, req = self._recvs.pop((kind, m))
        t0 = time.perf_counter()
        self.comm.wait(req)
        if what == "header":
            rows = self._rows[m][1]
            shape = tuple(int(d) for d in buf[1:1 + int(buf[0])])
            self._shapes[kind][rows] = shape
            self._header_pending[kind].discard(rows)
            buf = np.empty(shape, self.dtype)
            self.comm.wait(self.comm.irecv(buf, self._peer(kind), _TAGS[kind][0]))
        self._wait_s += time.perf_counter() - t0
        return buf

    def _send(self, kind: int, arr) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        dest = self.stage + 1 if kind == _ACT else self.stage - 1
        tag, header_tag = _TAGS[kind]
        if arr.shape[0] not in self._sent_shapes[kind]:
            if arr.ndim > _MAX_NDIM:
                raise ValueError(f"pipeline stage {self.stage}: a {arr.ndim}-D activation; at most {_MAX_NDIM} dims")
            header = np.zeros(_MAX_NDIM + 1, np.int64)
            header[0], header[1:1 + arr.ndim] = arr.ndim, arr.shape
            self._sends.append((self.comm.isend(header, dest, header_tag), header))
            self._sent_shapes[kind].add(arr.shape[0])
        self._sends.append((self.comm.isend(arr, dest, tag), arr))

    def _reap(self) -> None:
        self._sends = [(r, b) for r, b in self._sends if not _test(r)]

    def _held_bytes(self) -> int:
        seen: set = set()
        return (_nbytes(list(self._stash.values()), seen) + _nbytes([b for _, b, _ in self._recvs.values()], seen)
                + _nbytes([b for _, b in self._sends], seen) + _nbytes(list(self._dlogits.values()), seen))

    # -- a step ---------------------------------------------------------------------------------
    def _begin(self, x, y, n: int | None, need_y: bool = True) -> int:
        """Check what this stage was given, cut the batch, reset the step's message state."""
        if self.first and x is None:
            raise ValueError("Pipeline: the first stage needs the batch's inputs x")
        if self.last and need_y and y is None:
            raise ValueError("Pipeline: the last stage needs the batch's targets y")
        n = len(x) if x is not None else len(y) if y is not None else n
        if n is None:
            raise ValueError(f"Pipeline: stage {self.stage} got neither x nor y; pass the batch size n")
        if self.micro_batches > n:
            raise ValueError(f"micro_batches={self.micro_batches}: a batch of {n} examples cannot be cut into "
                             f"{self.micro_batches} non-empty micro-batches; expected micro_batches <= batch size")
        self._n, self._rows = n, micro_rows(n, self.micro_batches)
        self._recvs, self._sends, self._stash, self._dlogits = {}, [], {}, {}
        self._wait_s = 0.0
        return n

    def _forward(self, x, m: int):
        start, rows = self._rows[m]
        h = x[start:start + rows] if self.first else self._take(_ACT, m)
        for d in self._dropouts:
            d.rows = (start, self._n)
        if self._counters is not None:   # in train_step: every micro-batch replays the batch's draws
            self.module.set_draw_counters(self._counters)
        h = self.module.forward(h)   # a chain: activations flow blocked between the stage's layers
        for d in self._dropouts:
            d.rows = None
        return h

    def _end(self):
        t0 = time.perf_counter()
        self.comm.waitall([r for r, _ in self._sends])
        self._sends = []
        self._wait_s += time.perf_counter() - t0

    def train_step(self, x, y, loss_fn, step: int | None = None, n: int | None = None, mixed=None,
                   layer_done=None) -> tuple[float, int]:
        """Forward and backward of the batch (x, y), micro-batch by micro-batch under the
        schedule; gradients accumulate into `arena.grad` (zero it before, step the optimizer
        after). The first stage reads x, the last y; the others may pass None for both and the
        batch size n instead. Returns (mean loss over the batch, correct predictions) on every stage.
        mixed: (y_b, lam) of a mixup batch (x already mixed): the last stage's loss is then
        lam * loss(y) + (1 - lam) * loss(y_b), micro-batch by micro-batch. layer_done: called with a
        stage layer's index right after its backward of the last micro-batch, when that layer's
        gradients are final (DataParallel.bucket_starter: their all-reduce overlaps the rest)."""
        n = self._begin(x, y, n)
        if self.last:
            _check_mean_loss(loss_fn, y)
        if step is not None:
            self.module.set_step(step)
        # each micro-batch replays the batch's draws (a training forward advances the counters);
        # after the last one every counter has advanced once, as after a whole-batch forward
        self._counters = self.module.draw_counters()
        ops = schedule_ops(self.schedule, self.stages, self.stage, self.micro_batches)
        loss, correct, peak, peak_bytes = 0.0, 0, 0, 0
        for k, (op, m) in enumerate(ops):
            for op2, m2 in ops[k:k + 2]:  # this op's and the next op's receives, before computing
                if op2 == "F" and not self.first:
                    self._post(_ACT, m2)
                elif op2 == "B" and not self.last:
                    self._post(_GRAD, m2)
            if op == "F":
                h = self._forward(x, m)
                self._stash[m] = self.module.stash_cache()
                if self.last:
                    start, rows = self._rows[m]
                    target = y[start:start + rows]
                    try:
                        if mixed is None:
                            value, d = loss_fn(h, target)
                        else:
                            from ..data.augment import mixup_loss

                            value, d = mixup_loss(loss_fn, h, target, mixed[0][start:start + rows], mixed[1])
                    except FloatingPointError:  # reported as a NaN loss on every stage (the trainer stops)
                        value, d = float("nan"), np.zeros_like(h)
                    if rows != n:  # the loss is the batch mean: micro-batch m weighs rows / n
                        d *= d.dtype.type(rows / n)
                        value *= rows / n
                    loss += value
                    correct += int((h.argmax(axis=1) == np.asarray(target)).sum())
                    self._dlogits[m] = d
                else:
                    self._send(_ACT, h)
                peak = max(peak, len(self._stash))
                peak_bytes = max(peak_bytes, self._held_bytes())
            else:
                dy = self._dlogits.pop(m) if self.last else self._take(_GRAD, m)
                self.module.restore_cache(self._stash.pop(m))
                final = layer_done is not None and m == self.micro_batches - 1
                dy = self.module.backward(dy, after_child=layer_done if final else None)
                self.module.stash_cache(clear=True)   # drop this micro-batch's activations now
                if not self.first:
                    self._send(_GRAD, dy)
            self._reap()
        self._end()
        self._counters = None
        self.peak_in_flight, self.peak_activation_bytes, self.wait_s = peak, peak_bytes, self._wait_s
        if self.stages > 1:
            loss, correct = self.comm.bcast((loss, correct) if self.last else None, root=self.stages - 1)
        return float(loss), int(correct)

    def predict(self, x, n: int | None = None):
        """Forward only (in the module's current mode), micro-batched: the last stage returns the
        logits of the batch, the others None. Stages other than the first may pass x=None with n.
        A batch smaller than micro_batches is cut into one-row micro-batches."""
        n = len(x) if x is not None else n
        micro, self.micro_batches = self.micro_batches, min(self.micro_batches, n or 1)
        try:
            self._begin(x, None, n, need_y=False)
            outs = []
            for m in range(self.micro_batches):
                for m2 in range(m, min(m + 2, self.micro_batches)):  # in order: the first of a size gets the header
                    if not self.first:
                        self._post(_ACT, m2)
                h = self._forward(x, m)
                self.module.stash_cache(clear=True)
                if self.last:
                    outs.append(h)
                else:
                    self._send(_ACT, h)
                self._reap()
            self._end()
        finally:
            self.micro_batches = micro
        return np.concatenate(outs) if self.last else None

    def evaluate(self, loader, loss_fn) -> tuple[float, float]:
        """(mean loss, accuracy) over a loader in eval mode, on every stage (Trainer.evaluate's)."""
        self.module.eval()
        total, correct, n = 0.0, 0, 0
        try:
            for xb, yb in loader.batches(0):
                logits = self.predict(xb if self.first else None, n=len(yb))
                if self.last:
                    loss, _ = loss_fn(logits, yb)
                    total += float(loss) * len(yb)
                    correct += int((logits.argmax(axis=1) == yb).sum())
                n += len(yb)
        finally:
            self.module.train()
        if n == 0:
            raise ValueError("Pipeline.evaluate: the loader yielded no examples")
        if self.stages > 1:
            total, correct = self.comm.bcast((total, correct) if self.last else None, root=self.stages - 1)
        return total / n, correct / n

    # -- checkpoints: one file, in the single-process layout ------------------------------------
    def _stage_entries(self, stage: int, optimizer) -> list[tuple[str, tuple]]:
        """(key, shape) of what stage `stage` contributes to a checkpoint, in a fixed order every
        rank can compute: its parameters, their optimizer state, its module buffers, the draw
        counters of its stochastic modules (dropout's step)."""
        first, stop = self.bounds[stage]
        mine = {id(p) for layer in self.model._children[first:stop] for p in _own_params(layer[1])}
        params = [p for p in self.model.parameters() if id(p) in mine]
        mods = {id(m) for _, layer in self.model._children[first:stop] for _, m in layer.named_modules()}
        entries = [(f"param/{p.name}", p.shape) for p in params]
        entries += [(f"state/{k}/{p.name}", p.shape) for k in sorted(optimizer.state) for p in params]
        entries += [(f"buffer/{k}", np.shape(m.buffers[name])) for k, (m, name) in sorted(module_buffers(self.model).items())
                    if id(m) in mods]
        entries += [(f"draw_step/{path}", ()) for path, m in self.model.named_modules() if m.stochastic and id(m) in mods]
        return entries

    def _own_values(self, optimizer) -> dict:
        out = {f"param/{p.name}": p.data for p in self.params}
        for k, buf in optimizer.state.items():
            for p in self.params:
                out[f"state/{k}/{p.name}"] = buf[self.arena.slice_of(p)].reshape(p.shape)
        out.update({f"buffer/{k}": m.buffers[name] for k, (m, name) in self.buffers.items()})
        out.update({f"draw_step/{path}": np.float64(m.step) for path, m in self._stochastic().items()})
        return out

    def _stochastic(self) -> dict:
        """'<path in the whole model>' -> module, for this stage's stochastic modules."""
        mods = {id(m) for _, m in self.module.named_modules()}
        return {path: m for path, m in self.model.named_modules() if m.stochastic and id(m) in mods}

    def gather_state(self, optimizer) -> dict | None:
        """Every stage's parameters, optimizer state and buffers, on stage 0 (None elsewhere), keyed
        as in `_stage_entries`. Collective over the stages; values travel packed in float64 (exact
        for float32 parameters and buffers)."""
        tag = _TAGS[_ACT][0] + 100
        if not self.first:
            mine = self._own_values(optimizer)
            packed = np.concatenate([np.asarray(mine[k], np.float64).ravel()
                                     for k, _ in self._stage_entries(self.stage, optimizer)])
            self.comm.wait(self.comm.isend(packed, 0, tag))
            return None
        out = {k: np.array(v) for k, v in self._own_values(optimizer).items()}
        for s in range(1, self.stages):
            entries = self._stage_entries(s, optimizer)
            packed = np.empty(sum(int(np.prod(shape)) for _, shape in entries), np.float64)
            self.comm.wait(self.comm.irecv(packed, s, tag))
            at = 0
            for k, shape in entries:
                size = int(np.prod(shape))
                out[k] = packed[at:at + size].reshape(shape)
                at += size
        return out

    def _stage_layout(self, stage: int) -> tuple[list, list[int], int]:
        """(parameters, offsets, size) of stage `stage`'s arena, computed on any rank."""
        first, stop = self.bounds[stage]
        mine = {id(p) for _, layer in self.model._children[first:stop] for p in _own_params(layer)}
        return ParamArena.layout([p for p in self.model.parameters() if id(p) in mine])

    def from_whole(self, value, what: str = "array"):
        """This stage's part, in its arena's layout, of an array (..., n) laid out along its last
        axis like a single process's arena of the whole model (n its size)."""
        value = np.asarray(value)
        whole = _Layout(self.model.parameters(), None)
        if value.ndim == 0 or value.shape[-1] != whole.size:
            raise ValueError(f"{what}: expected a last axis of {whole.size} (the whole model's arena), got shape "
                             f"{value.shape}")
        own = self._own_names
        out = np.zeros(value.shape[:-1] + (self.arena.size,), value.dtype)
        for p, off in zip(whole.order, whole.offsets):
            if p.name in own:
                out[..., self.arena.slice_of(own[p.name])] = value[..., off:off + p.size]
        return out

    def _gather_extra(self, extra: dict | None, arena_extra: dict | None, optimizer) -> tuple[dict, dict] | None:
        """Every stage's checkpoint extras and optimizer groups on stage 0 (None elsewhere): `extra`
        as they are (keys differ per stage, e.g. a stage's buffers), `arena_extra` (arrays (...,
        stage arena size): error-feedback residuals, EMA, snapshots) laid out in the whole model's
        arena along the last axis; the groups' hyperparameters by name (stages may hold different
        groups: a frozen part). Collective over the stages (an allgather: once per checkpoint)."""
        mine = ({k: np.asarray(v) for k, v in (extra or {}).items()},
                {k: np.asarray(v) for k, v in (arena_extra or {}).items()}, optimizer.state_dict()["groups"])
        parts = self.comm.allgather(mine) if self.stages > 1 else [mine]
        if not self.first:
            return None
        whole = _Layout(self.model.parameters(), None)
        at = {p.name: off for p, off in zip(whole.order, whole.offsets)}
        out: dict = {}
        groups: dict = {}
        for s, (plain, arena_arrays, stage_groups) in enumerate(parts):
            out.update(plain)
            groups.update(stage_groups)
            order, offsets, _ = self._stage_layout(s)
            for k, v in arena_arrays.items():
                merged = out.setdefault(k, np.zeros(v.shape[:-1] + (whole.size,), v.dtype))
                for p, off in zip(order, offsets):
                    merged[..., at[p.name]:at[p.name] + p.size] = v[..., off:off + p.size]
        return out, groups

    def save_checkpoint(self, path, optimizer, meta: dict, extra: dict | None = None,
                        arena_extra: dict | None = None) -> None:
        """One checkpoint of the whole model, as a single process would write it (parameters by
        name, optimizer state in the whole model's arena layout, buffers by path), gathered on
        stage 0, which writes it when `path` is not None. extra / arena_extra: each stage's own
        extra arrays (see _gather_extra). Collective over the stages."""
        from ..train.checkpoint import save_checkpoint

        state = self.gather_state(optimizer)
        gathered = self._gather_extra(extra, arena_extra, optimizer)
        if state is None or path is None:
            return
        extra, groups = gathered
        params = self.model.parameters()
        whole = _Layout(params, self.dtype)
        for p in params:
            whole.named[p.name][...] = state[f"param/{p.name}"]
        for k, (m, name) in module_buffers(self.model).items():   # other stages' modules: unused copies here
            m.buffers[name] = np.asarray(state[f"buffer/{k}"], dtype=np.asarray(m.buffers[name]).dtype)
        for where, m in self.model.named_modules():
            if m.stochastic:
                m.step = int(state[f"draw_step/{where}"])
        sd = optimizer.state_dict()
        sd["groups"] = groups
        sd["state"] = {}
        for k in optimizer.state:
            flat = np.zeros(whole.size, self.dtype)
            for p, off in zip(whole.order, whole.offsets):
                flat[off:off + p.size] = state[f"state/{k}/{p.name}"].ravel()
            sd["state"][k] = flat
        save_checkpoint(path, self.model, whole, _Fixed(sd), meta, extra=extra)

    def apply_checkpoint(self, path, arrays: dict, optimizer=None) -> None:
        """This stage's share of a single-process (or pipelined) checkpoint's arrays
        (train.checkpoint.read_checkpoint): parameters, buffers and optimizer state."""
        from ..train.checkpoint import _unflatten

        names = [k[6:] for k in arrays if k.startswith("param/")]
        expected = [p.name for p in self.model.parameters()]
        if sorted(names) != sorted(expected):
            raise KeyError(f"{path}: parameters {sorted(set(names) ^ set(expected))} do not match the model's")
        self.arena.load_state_dict({p.name: arrays[f"param/{p.name}"] for p in self.params})
        for k, (m, name) in self.buffers.items():
            if f"buffer/{k}" not in arrays:
                raise KeyError(f"{path}: no buffer {k!r} for this model")
            m.buffers[name] = np.asarray(arrays[f"buffer/{k}"], dtype=np.asarray(m.buffers[name]).dtype)
        for where, m in self._stochastic().items():   # absent from checkpoints older than the counters
            if f"draw_step/{where}" in arrays:
                m.step = int(arrays[f"draw_step/{where}"])
        if optimizer is None:
            return
        sd = _unflatten("opt", arrays)
        sd["state"] = {k: self.from_whole(np.asarray(flat, self.dtype), f"{path}: optimizer state {k!r}")
                       for k, flat in (sd.get("state") or {}).items()}
        sd["groups"] = {g: v for g, v in (sd.get("groups") or {}).items() if g in optimizer.group_hyper}
        optimizer.load_state_dict(sd)

    @property
    def _own_names(self) -> dict:
        return {p.name: p for p in self.params}


class _Layout:
    """A whole model's arena layout without its parameters' own buffers: `named` gives a view of
    `data` per parameter name (allocated only when dtype is given, on the stage that writes)."""

    def __init__(self, params, dtype):
        self.order, self.offsets, self.size = ParamArena.layout(params)
        self.xp = np
        if dtype is not None:
            self.data = np.zeros(self.size, dtype)
            self.named = {p.name: self.data[off:off + p.size].reshape(p.shape) for p, off in zip(self.order, self.offsets)}

    def state_dict(self) -> dict:
        return {name: np.array(v) for name, v in self.named.items()}


class _Fixed:
    """An optimizer stand-in whose state_dict() is a given dict (save_checkpoint asks for it)."""

    def __init__(self, sd: dict):
        self.sd = sd

    def state_dict(self) -> dict:
        return self.sd
