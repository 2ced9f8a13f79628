"""The parameter arena: every parameter of a model is a view into one contiguous float32 buffer,
every gradient a view into a second buffer of the same layout.

So an optimizer update is one fused pass per parameter group, an all-reduce sends `grad` as it
is, and averaging, checkpoints and gradient norms are single array operations. Groups are
contiguous ranges (decayed weights first, then parameters without weight decay: biases and
normalization parameters); inside a group parameters are laid out in reverse forward order so
that the first gradients backward produces sit together at the start of the arena.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class Parameter:
    """A named tensor owned by a module. Before binding, `data` and `grad` are None."""

    def __init__(self, shape, init, decay: bool = True, name: str = ""):
        self.shape = tuple(int(s) for s in shape)
        self.size = int(np.prod(self.shape)) if self.shape else 1
        self.init = init          # callable(shape, rng, dtype) -> array
        self.decay = decay        # weight decay applies (False for biases and BN parameters)
        self.name = name
        self.data = None
        self.grad = None
        self.arena = None         # the ParamArena data and grad are views into
        self.frozen = False

    def __repr__(self):
        return f"Parameter({self.name or '?'}, shape={self.shape}, decay={self.decay})"


@dataclass
class ParamGroup:
    """A contiguous range [start, stop) of the arena with its own hyperparameters."""

    name: str
    start: int
    stop: int
    hyper: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.stop - self.start


class ParamArena:
    """Flat parameter / gradient buffers for a list of parameters, with views bound into them."""

    def __init__(self, params: list[Parameter], seed: int = 0, dtype=np.float32, xp=np, init: bool = True):
        if not params:
            raise ValueError("ParamArena: expected at least one parameter, got none")
        self.dtype = np.dtype(dtype)
        self.xp = xp
        self.rebound = False      # some parameter was bound to another arena since (check_current)
        self.forward_order = list(params)
        self.params, self.offsets, self.size = self.layout(params)
        n_decay = sum(p.size for p in params if p.decay)
        self.data = xp.zeros(self.size, dtype=self.dtype)
        self.grad = xp.zeros(self.size, dtype=self.dtype)
        self.groups: list[ParamGroup] = []
        if n_decay:
            self.groups.append(ParamGroup("decay", 0, n_decay))
        if n_decay < self.size:
            self.groups.append(ParamGroup("no_decay", n_decay, self.size, {"weight_decay": 0.0}))
        self._bind()
        if init:
            self.initialize(seed)

    @staticmethod
    def layout(params: list[Parameter]) -> tuple[list[Parameter], list[int], int]:
        """(parameters in arena order, their offsets, total size) for `params` in forward order,
        without allocating: decayed parameters first, reverse forward order inside each group (see
        the module docstring). A pipeline stage maps its own arena to a whole model's with it."""
        ordered = [p for p in params if p.decay][::-1] + [p for p in params if not p.decay][::-1]
        offsets = np.cumsum([0] + [p.size for p in ordered]).tolist()
        return ordered, offsets[:-1], offsets[-1]

    @classmethod
    def for_model(cls, model, seed: int = 0, dtype=np.float32, xp=np, init: bool = True) -> "ParamArena":
        """Allocate the arena for `model.parameters()`, bind the views and initialize."""
        arena = cls(model.parameters(), seed=seed, dtype=dtype, xp=xp, init=init)
        model.arena = arena
        return arena

    def _bind(self):
        for p, off in zip(self.params, self.offsets):
            if p.arena is not None and p.arena is not self:
                p.arena.rebound = True
            p.data = self.data[off:off + p.size].reshape(p.shape)
            p.grad = self.grad[off:off + p.size].reshape(p.shape)
            p.arena = self

    def check_current(self, where: str) -> None:
        """Raise if a parameter of this arena was bound to another arena since: the model then
        reads the other arena's values, and updating this one would silently change nothing."""
        if self.rebound:
            raise RuntimeError(f"{where}: the model's parameters were bound to another ParamArena since this one "
                               "was made (a second ParamArena.for_model), so this arena no longer holds the weights "
                               "the model uses; build the optimizer on the new arena")

    def initialize(self, seed: int = 0) -> None:
        """Initialize every parameter with its own init; a parameter's values depend only on the
        seed and its position in forward order, not on the arena layout."""
        rng = np.random.default_rng(seed)
        for p in self.forward_order:
            values = np.asarray(p.init(p.shape, rng, np.float64), dtype=self.dtype)
            if values.shape != p.shape:
                raise ValueError(f"{p.name}: init returned shape {values.shape}, expected {p.shape}")
            p.data[...] = self.xp.asarray(values)

    def zero_grad(self) -> None:
        self.grad[...] = 0

    def named(self) -> dict[str, Parameter]:
        return {p.name: p for p in self.params}

    def slice_of(self, param: Parameter) -> slice:
        i = next(k for k, q in enumerate(self.params) if q is param)
        return slice(self.offsets[i], self.offsets[i] + param.size)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of every parameter (from the GPU too), by name."""
        return {p.name: np.array(p.data.get() if self.xp is not np else p.data) for p in self.params}

    def load_state_dict(self, state: dict) -> None:
        names = self.named()
        missing = sorted(set(names) - set(state))
        extra = sorted(set(state) - set(names))
        if missing or extra:
            raise KeyError(f"ParamArena.load_state_dict: missing {missing}, unexpected {extra}")
        for name, p in names.items():
            value = np.asarray(state[name])
            if value.shape != p.shape:
                raise ValueError(f"ParamArena.load_state_dict({name!r}): expected shape {p.shape}, got {value.shape}")
            p.data[...] = self.xp.asarray(value, dtype=self.dtype)

    def __repr__(self):
        groups = ", ".join(f"{g.name}[{g.start}:{g.stop}]" for g in self.groups)
        return f"ParamArena({len(self.params)} params, {self.size} values, groups: {groups})"
