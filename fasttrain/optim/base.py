"""Optimizers over the parameter arena: state buffers have the arena's layout and `step()` makes
ONE fused kernel call per parameter group (a contiguous range of the arena)."""
from __future__ import annotations

import numpy as np

from ..backend import kernel


def _check(name: str, value, lo=0.0, hi=None, lo_open=False, hi_open=True):
    ok = isinstance(value, (int, float, np.floating)) and np.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        lo_b = "(" if lo_open else "["
        hi_b = ")" if hi_open else "]"
        raise ValueError(f"{name}: expected a number in {lo_b}{lo}, {hi if hi is not None else 'inf'}{hi_b}, got {value!r}")
    return float(value)


class Optimizer:
    """Base class. Hyperparameters: defaults given to the constructor, overridden per group by the
    group's `hyper` dict (the arena's 'no_decay' group sets weight_decay=0; l1 follows it)."""

    op: str = ""
    state_names: tuple[str, ...] = ()

    def __init__(self, arena, lr: float, weight_decay: float = 0.0, l1: float = 0.0, **hyper):
        self.arena = arena
        self.defaults = {"lr": _check("lr", lr), "weight_decay": _check("weight_decay", weight_decay),
                         "l1": _check("l1", l1), **hyper}
        self.state = {name: arena.xp.zeros(arena.size, arena.dtype) for name in self.state_names}
        self.step_count = 0

    # -- hyperparameters -----------------------------------------------------------------------
    @property
    def lr(self) -> float:
        return self.defaults["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.defaults["lr"] = _check("lr", value)

    def set_lr(self, value: float) -> None:
        self.lr = value

    def hyper(self, group) -> dict:
        h = dict(self.defaults)
        h.update(group.hyper)
        if group.hyper.get("weight_decay", None) == 0.0:
            h["l1"] = 0.0  # groups without weight decay (biases, norms) get no penalty at all
        return h

    # -- the update ----------------------------------------------------------------------------
    def step(self) -> None:
        self.step_count += 1
        p, g = self.arena.data, self.arena.grad
        fn = kernel(self.op, like=p)
        for group in self.arena.groups:
            h = self.hyper(group)
            if h.get("frozen") or h["lr"] == 0.0:
                continue
            s = slice(group.start, group.stop)
            fn(p[s], g[s], *(self.state[n][s] for n in self.state_names), *self.kernel_args(h))

    def kernel_args(self, h: dict) -> tuple:
        raise NotImplementedError

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"type": type(self).__name__, "step": self.step_count, "defaults": dict(self.defaults),
                "state": {k: np.array(self.arena.xp.asnumpy(v) if hasattr(self.arena.xp, "asnumpy") else v)
                          for k, v in self.state.items()}}

    def load_state_dict(self, sd: dict) -> None:
        if sd.get("type") != type(self).__name__:
            raise ValueError(f"{type(self).__name__}.load_state_dict: state is for {sd.get('type')!r}")
        if set(sd["state"]) != set(self.state):
            raise KeyError(f"{type(self).__name__}.load_state_dict: expected state {sorted(self.state)}, "
                           f"got {sorted(sd['state'])}")
        for k, v in sd["state"].items():
            if np.shape(v) != (self.arena.size,):
                raise ValueError(f"{type(self).__name__}.load_state_dict({k}): expected ({self.arena.size},), "
                                 f"got {np.shape(v)}")
            self.state[k][...] = self.arena.xp.asarray(v, dtype=self.arena.dtype)
        self.step_count = int(sd["step"])
        self.defaults = dict(sd["defaults"])

    def __repr__(self):
        hp = ", ".join(f"{k}={v}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({hp})"
