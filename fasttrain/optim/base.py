"""Optimizers over the parameter arena: state buffers have the arena's layout and `step()` makes
ONE fused kernel call per parameter group (a contiguous range of the arena), docs/KERNELS.md."""
from __future__ import annotations

import math

import numpy as np

from ..backend import kernel

# Hyperparameters every optimizer understands; `frozen` skips a group entirely; `decay_all`
# switches off the arena's exemption of biases and normalization parameters (PyTorch's behaviour).
COMMON = ("lr", "weight_decay", "l1", "frozen", "decay_all")
_FLAGS = ("frozen", "decay_all")


def check_range(owner: str, name: str, value, lo: float = 0.0, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = True) -> float:
    """`value` as a float, or a ValueError naming the argument, the value and the allowed range."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo)
    ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo}, {'inf)' if hi is None else f'{hi}' + (')' if hi_open else ']')}"
        raise ValueError(f"{owner}({name}): expected a finite number in {rng}, got {value!r}")
    return float(value)


class Optimizer:
    """Base class. `defaults` are the constructor's hyperparameters; each group of the arena may
    override them with its own `hyper` dict (the arena's 'no_decay' group sets weight_decay=0 and
    then gets l1=0 too: biases and normalization parameters get no penalty at all). The optimizer
    copies the groups' overrides at construction (`group_hyper`, like torch's param_groups); change
    them afterwards with `set_lr(value, group=...)` or `set_hyper(group, **values)`.

    A group with `frozen=True` or lr == 0 is skipped (its parameters and state stay untouched).

    PyTorch decays every parameter unless told otherwise; we exempt biases and normalization
    parameters (the arena's 'no_decay' group). `decay_all=True` restores PyTorch's behaviour: given
    to the constructor it applies to every group, or per group with
    `set_hyper('no_decay', decay_all=True)`; such a group then gets the optimizer's weight_decay
    and l1 in place of the arena's zero.
    Subclasses set `op` (the kernel), `state_names` (one flat buffer each, the arena's size),
    `HYPER` (their own hyperparameters with validation ranges) and `kernel_args(h)`."""

    op: str = ""
    state_names: tuple[str, ...] = ()
    # name -> (lo, hi, lo_open, hi_open) for check_range
    HYPER: dict[str, tuple] = {}
    _RANGES = {"lr": (0.0, None, False, True), "weight_decay": (0.0, None, False, True),
               "l1": (0.0, None, False, True)}

    options: dict = {}  # constructor choices that shape the state (e.g. amsgrad), checked on load

    def __init__(self, arena, lr: float, weight_decay: float = 0.0, l1: float = 0.0, decay_all: bool = False,
                 **hyper):
        self.arena = arena
        self.defaults = self._validate({"lr": lr, "weight_decay": weight_decay, "l1": l1, "decay_all": decay_all,
                                        **hyper})
        self.group_hyper = {g.name: self._validate(dict(g.hyper), where=f"group {g.name!r}") for g in arena.groups}
        self.state = {name: arena.xp.zeros(arena.size, dtype=arena.dtype) for name in self.state_names}
        self.step_count = 0

    # -- hyperparameters -----------------------------------------------------------------------
    def _validate(self, h: dict, where: str = "") -> dict:
        owner = type(self).__name__ + (f"[{where}]" if where else "")
        known = set(COMMON) | set(self.HYPER)
        unknown = sorted(set(h) - known)
        if unknown:
            raise TypeError(f"{owner}: unknown hyperparameter(s) {unknown}; expected some of {sorted(known)}")
        out = {}
        for k, v in h.items():
            if k in _FLAGS:
                out[k] = bool(v)
            else:
                lo, hi, lo_open, hi_open = self._RANGES.get(k) or self.HYPER[k]
                out[k] = check_range(owner, k, v, lo, hi, lo_open, hi_open)
        return out

    @property
    def lr(self) -> float:
        """The default learning rate (groups with their own lr keep it; see set_lr)."""
        return self.defaults["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.defaults["lr"] = check_range(type(self).__name__, "lr", value)

    def set_lr(self, value: float, group: str | None = None) -> None:
        """Set the default lr (group=None) or one group's own lr (e.g. from a schedule per group)."""
        if group is None:
            self.lr = value
        else:
            self.set_hyper(group, lr=value)

    def set_hyper(self, group: str, **values) -> None:
        """Override hyperparameters of one group (validated like the constructor's)."""
        if group not in self.group_hyper:
            raise KeyError(f"{type(self).__name__}.set_hyper(group): expected one of {sorted(self.group_hyper)}, "
                           f"got {group!r}")
        self.group_hyper[group].update(self._validate(values, where=f"group {group!r}"))

    def hyper(self, group) -> dict:
        """The effective hyperparameters of one arena group."""
        own = self.group_hyper[group.name]
        h = {**self.defaults, **own}
        exempt = own.get("weight_decay", None) == 0.0
        if exempt and h["decay_all"] and group.hyper.get("weight_decay", None) == 0.0:
            # the zero is the arena's exemption, which decay_all switches off
            h["weight_decay"] = self.defaults["weight_decay"]
        elif exempt and "l1" not in own:
            h["l1"] = 0.0  # no weight decay means no penalty at all, L1 included
        return h

    # -- the update ----------------------------------------------------------------------------
    def step(self) -> None:
        """One update of every (non-frozen) group from arena.grad: one kernel call per group."""
        self.arena.check_current(f"{type(self).__name__}.step")
        self.step_count += 1
        p, g = self.arena.data, self.arena.grad
        fn = kernel(self.op, like=p)
        for group in self.arena.groups:
            h = self.hyper(group)
            if h.get("frozen", False) or h["lr"] == 0.0:
                continue
            s = slice(group.start, group.stop)
            fn(p[s], g[s], *(self.state[n][s] for n in self.state_names), *self.kernel_args(h))

    def kernel_args(self, h: dict) -> tuple:
        """The scalar arguments of `op` after the arrays, from a group's hyperparameters."""
        raise NotImplementedError

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Step count, default and per-group hyperparameters, state buffers as NumPy arrays.
        Nested dicts of Python scalars, strings and arrays (fasttrain.train.checkpoint flattens
        them into an .npz; empty dicts may come back missing, load_state_dict accepts that)."""
        host = getattr(self.arena.xp, "asnumpy", np.asarray)
        return {"type": type(self).__name__, "step": self.step_count, "defaults": dict(self.defaults),
                "options": dict(self.options),
                "groups": {k: dict(v) for k, v in self.group_hyper.items()},
                "state": {k: np.array(host(v)) for k, v in self.state.items()}}

    def load_state_dict(self, sd: dict) -> None:
        name = type(self).__name__
        if sd.get("type") != name:
            raise ValueError(f"{name}.load_state_dict: expected a state for {name}, got one for {sd.get('type')!r}")
        options = {k: bool(v) for k, v in sd.get("options", {}).items()}
        if options and options != self.options:
            raise ValueError(f"{name}.load_state_dict(options): this optimizer was built with {self.options}, "
                             f"the state is for {options}")
        state = sd.get("state", {})
        if set(state) != set(self.state):
            raise KeyError(f"{name}.load_state_dict(state): expected buffers {sorted(self.state)}, got {sorted(state)}")
        for k, v in state.items():
            if np.shape(v) != (self.arena.size,):
                raise ValueError(f"{name}.load_state_dict(state[{k!r}]): expected shape ({self.arena.size},), "
                                 f"got {np.shape(v)}")
        groups = sd.get("groups", {})
        extra = sorted(set(groups) - set(self.group_hyper))
        if extra:
            raise KeyError(f"{name}.load_state_dict(groups): arena has groups {sorted(self.group_hyper)}, got {extra}")
        # validate everything before changing anything
        # a state from before a hyperparameter existed keeps the constructor's value for it
        defaults = {**self.defaults, **self._validate(dict(sd["defaults"]))}
        group_hyper = {g: self._validate(dict(groups.get(g, {})), where=f"group {g!r}") for g in self.group_hyper}
        for k, v in state.items():
            self.state[k][...] = self.arena.xp.asarray(v, dtype=self.arena.dtype)
        self.defaults, self.group_hyper = defaults, group_hyper
        self.step_count = int(sd["step"])

    def __repr__(self):
        hp = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({hp})"
