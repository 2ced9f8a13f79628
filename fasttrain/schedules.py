"""Learning-rate schedules: pure functions of the step (the trainer owns the step counter).
Each is a callable `schedule(step) -> lr` (step = number of updates done, from 0) with a readable
repr; `from_config(dict)` builds one by name. Warmup composes with any of them."""
from __future__ import annotations

import math

import numpy as np


def _number(owner, name, v, lo=0.0, lo_open=False, hi=None):
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v > lo if lo_open else v >= lo) and (hi is None or v <= hi)
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo}, {'inf)' if hi is None else f'{hi}]'}"
        raise ValueError(f"{owner}({name}): expected a finite number in {rng}, got {v!r}")
    return float(v)


def _count(owner, name, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{owner}({name}): expected an int >= {lo}, got {v!r}")
    return int(v)


class Schedule:
    def __call__(self, step: int) -> float:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"{type(self).__name__}(step): expected an int step >= 0, got {step!r}")
        return float(self.value(int(step)))

    def value(self, step: int) -> float:
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    def __init__(self, lr: float):
        self.lr = _number("Constant", "lr", lr)

    def value(self, step):
        return self.lr


class StepDecay(Schedule):
    """lr * gamma^(step // step_size): the classic 'divide by 10 every N epochs' (Krizhevsky 2012)."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1):
        self.lr = _number("StepDecay", "lr", lr)
        self.step_size = _count("StepDecay", "step_size", step_size)
        self.gamma = _number("StepDecay", "gamma", gamma, lo_open=True, hi=1.0)

    def value(self, step):
        return self.lr * self.gamma ** (step // self.step_size)


class Exponential(Schedule):
    """lr * gamma^step."""

    def __init__(self, lr: float, gamma: float):
        self.lr = _number("Exponential", "lr", lr)
        self.gamma = _number("Exponential", "gamma", gamma, lo_open=True, hi=1.0)

    def value(self, step):
        return self.lr * self.gamma ** step


class InverseTime(Schedule):
    """1/t decay: lr / (1 + decay_rate * step / decay_steps)."""

    def __init__(self, lr: float, decay_rate: float = 1.0, decay_steps: int = 1):
        self.lr = _number("InverseTime", "lr", lr)
        self.decay_rate = _number("InverseTime", "decay_rate", decay_rate)
        self.decay_steps = _count("InverseTime", "decay_steps", decay_steps)

    def value(self, step):
        return self.lr / (1.0 + self.decay_rate * step / self.decay_steps)


class Cosine(Schedule):
    """Half a cosine from lr to min_lr over total_steps, then min_lr (Loshchilov & Hutter 2017,
    one cycle without restarts)."""

    def __init__(self, lr: float, total_steps: int, min_lr: float = 0.0):
        self.lr = _number("Cosine", "lr", lr)
        self.total_steps = _count("Cosine", "total_steps", total_steps)
        self.min_lr = _number("Cosine", "min_lr", min_lr, hi=self.lr)

    def value(self, step):
        t = min(step, self.total_steps) / self.total_steps
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t))


class Linear(Schedule):
    """Straight line from lr to end_lr over total_steps, then end_lr."""

    def __init__(self, lr: float, total_steps: int, end_lr: float = 0.0):
        self.lr = _number("Linear", "lr", lr)
        self.total_steps = _count("Linear", "total_steps", total_steps)
        self.end_lr = _number("Linear", "end_lr", end_lr)

    def value(self, step):
        t = min(step, self.total_steps) / self.total_steps
        return self.lr + (self.end_lr - self.lr) * t


class InverseSqrt(Schedule):
    """lr * sqrt(warmup_steps / max(step, warmup_steps)): flat for warmup_steps, then 1/sqrt(step)
    (the 'rsqrt' schedule of Raffel et al. 2020, T5, scaled to peak at lr). Wrapped in
    Warmup(InverseSqrt(lr, w), w) it is the schedule of Vaswani et al. 2017 (linear ramp, then
    1/sqrt(step)); from_config builds that when given warmup_steps."""

    def __init__(self, lr: float, warmup_steps: int = 1):
        self.lr = _number("InverseSqrt", "lr", lr)
        self.warmup_steps = _count("InverseSqrt", "warmup_steps", warmup_steps)

    def value(self, step):
        return self.lr * math.sqrt(self.warmup_steps / max(step, self.warmup_steps))


class Warmup(Schedule):
    """Linear warmup composable with any schedule (Goyal et al. 2017, large-batch training): for
    step < warmup_steps the lr rises linearly from start_factor * schedule(warmup_steps) to
    schedule(warmup_steps), so it is continuous there; afterwards it is schedule(step)."""

    def __init__(self, schedule, warmup_steps: int, start_factor: float = 0.0):
        if not callable(schedule):
            raise ValueError(f"Warmup(schedule): expected a callable step -> lr, got {schedule!r}")
        self.schedule = schedule
        self.warmup_steps = _count("Warmup", "warmup_steps", warmup_steps, lo=0)
        self.start_factor = _number("Warmup", "start_factor", start_factor, hi=1.0)

    def value(self, step):
        if step >= self.warmup_steps:
            return self.schedule(step)
        frac = self.start_factor + (1 - self.start_factor) * step / self.warmup_steps
        return frac * self.schedule(self.warmup_steps)


class CosineRestarts(Schedule):
    """SGDR (Loshchilov & Hutter 2017, eq. 5): cosine cycles from lr to min_lr, the first `period`
    (T_0) steps long, each next one `mult` (T_mult) times longer (rounded to whole steps); the lr
    jumps back to lr at each restart."""

    def __init__(self, lr: float, period: int, mult: float = 1.0, min_lr: float = 0.0):
        self.lr = _number("CosineRestarts", "lr", lr)
        self.period = _count("CosineRestarts", "period", period)
        self.mult = _number("CosineRestarts", "mult", mult, lo=1.0)
        self.min_lr = _number("CosineRestarts", "min_lr", min_lr, hi=self.lr)

    def cycle(self, step: int) -> tuple[int, int, int]:
        """(cycle index, step inside the cycle, cycle length)."""
        if self.mult == 1.0:  # constant length: closed form, so late steps cost nothing
            k, t = divmod(step, self.period)
            return k, t, self.period
        start, length, k = 0, self.period, 0
        while step >= start + length:  # lengths grow geometrically: O(log step) iterations
            start += length
            length = int(round(length * self.mult))
            k += 1
        return k, step - start, length

    def value(self, step):
        _, t, length = self.cycle(step)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t / length))


_BY_NAME = {"constant": Constant, "step": StepDecay, "exponential": Exponential, "inverse_time": InverseTime,
            "cosine": Cosine, "linear": Linear, "inverse_sqrt": InverseSqrt, "cosine_restarts": CosineRestarts}


def from_config(cfg: dict) -> Schedule:
    """A schedule from a dict: "name" (one of _BY_NAME), the class's arguments, and optionally
    "warmup_steps" / "warmup_start_factor" for a linear warmup in front, e.g.
    {"name": "cosine", "lr": 0.1, "total_steps": 1000, "warmup_steps": 100}.
    For "inverse_sqrt", warmup_steps is both the ramp and the start of the 1/sqrt decay (Vaswani)."""
    if not isinstance(cfg, dict):
        raise ValueError(f"from_config(cfg): expected a dict, got {type(cfg).__name__}")
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in _BY_NAME:
        raise ValueError(f"schedule name: expected one of {sorted(_BY_NAME)}, got {name!r}")
    warmup = cfg.pop("warmup_steps", 0)
    start_factor = cfg.pop("warmup_start_factor", 0.0)
    if name == "inverse_sqrt":
        cfg["warmup_steps"] = max(int(warmup), 1) if isinstance(warmup, (int, np.integer)) else warmup
    try:
        sched = _BY_NAME[name](**cfg)
    except TypeError as exc:
        raise ValueError(f"schedule {name!r}: {exc}") from None
    return Warmup(sched, warmup, start_factor) if warmup else sched
