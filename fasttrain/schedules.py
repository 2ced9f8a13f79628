"""Learning-rate schedules: pure functions of the step (the trainer owns the step counter).
Each is a callable `schedule(step) -> lr` with a readable repr."""
from __future__ import annotations

import math


class Schedule:
    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"{type(self).__name__}(step): expected step >= 0, got {step}")
        return float(self.value(int(step)))

    def value(self, step: int) -> float:
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _positive(name, v):
    if not (isinstance(v, (int, float)) and v > 0):
        raise ValueError(f"{name}: expected a positive number, got {v!r}")
    return v


class Constant(Schedule):
    def __init__(self, lr: float):
        self.lr = lr

    def value(self, step):
        return self.lr


class StepDecay(Schedule):
    """lr * gamma^(step // step_size)."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1):
        self.lr, self.step_size, self.gamma = lr, _positive("step_size", step_size), gamma

    def value(self, step):
        return self.lr * self.gamma ** (step // self.step_size)


class Exponential(Schedule):
    """lr * gamma^step."""

    def __init__(self, lr: float, gamma: float):
        self.lr, self.gamma = lr, gamma

    def value(self, step):
        return self.lr * self.gamma ** step


class InverseTime(Schedule):
    """1/t decay: lr / (1 + decay_rate * step / decay_steps)."""

    def __init__(self, lr: float, decay_rate: float = 1.0, decay_steps: int = 1):
        self.lr, self.decay_rate, self.decay_steps = lr, decay_rate, _positive("decay_steps", decay_steps)

    def value(self, step):
        return self.lr / (1.0 + self.decay_rate * step / self.decay_steps)


class Cosine(Schedule):
    """Half a cosine from lr to min_lr over total_steps, then min_lr."""

    def __init__(self, lr: float, total_steps: int, min_lr: float = 0.0):
        self.lr, self.total_steps, self.min_lr = lr, _positive("total_steps", total_steps), min_lr

    def value(self, step):
        t = min(step, self.total_steps) / self.total_steps
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t))


class Linear(Schedule):
    """Straight line from lr to end_lr over total_steps, then end_lr."""

    def __init__(self, lr: float, total_steps: int, end_lr: float = 0.0):
        self.lr, self.total_steps, self.end_lr = lr, _positive("total_steps", total_steps), end_lr

    def value(self, step):
        t = min(step, self.total_steps) / self.total_steps
        return self.lr + (self.end_lr - self.lr) * t


class InverseSqrt(Schedule):
    """lr * sqrt(warmup_steps / max(step, warmup_steps)) (Vaswani et al. 2017, without the warmup ramp)."""

    def __init__(self, lr: float, warmup_steps: int = 1):
        self.lr, self.warmup_steps = lr, _positive("warmup_steps", warmup_steps)

    def value(self, step):
        return self.lr * math.sqrt(self.warmup_steps / max(step, self.warmup_steps))


class Warmup(Schedule):
    """Linear warmup from start_factor * schedule(warmup_steps) to schedule, composable with any
    schedule (Goyal et al. 2017: large-batch training)."""

    def __init__(self, schedule: Schedule, warmup_steps: int, start_factor: float = 0.0):
        self.schedule, self.warmup_steps, self.start_factor = schedule, int(warmup_steps), start_factor

    def value(self, step):
        if step >= self.warmup_steps:
            return self.schedule(step)
        frac = self.start_factor + (1 - self.start_factor) * step / self.warmup_steps
        return frac * self.schedule(self.warmup_steps)


class CosineRestarts(Schedule):
    """SGDR (Loshchilov & Hutter 2017): cosine cycles, the first `period` steps long, each next one
    `mult` times longer; the lr jumps back to lr at each restart."""

    def __init__(self, lr: float, period: int, mult: float = 1.0, min_lr: float = 0.0):
        self.lr, self.period, self.mult, self.min_lr = lr, _positive("period", period), mult, min_lr
        if mult < 1:
            raise ValueError(f"mult: expected >= 1, got {mult}")

    def cycle(self, step: int) -> tuple[int, int, int]:
        """(cycle index, step inside the cycle, cycle length)."""
        start, length, k = 0, self.period, 0
        while step >= start + length:
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
    """e.g. {"name": "cosine", "lr": 0.1, "total_steps": 1000, "warmup_steps": 100}."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in _BY_NAME:
        raise ValueError(f"schedule name: expected one of {sorted(_BY_NAME)}, got {name!r}")
    warmup = cfg.pop("warmup_steps", 0) if name != "inverse_sqrt" else 0
    try:
        sched = _BY_NAME[name](**cfg)
    except TypeError as exc:
        raise ValueError(f"schedule {name!r}: {exc}") from None
    return Warmup(sched, warmup) if warmup else sched
