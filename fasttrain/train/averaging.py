"""Weight averaging over the flat parameter arena: an exponential moving average (EMA) and a
uniform Polyak average. Because every parameter lives in `arena.data`, an update is one fused
pass over the whole arena (no per-parameter loop), and evaluating with the averaged weights
is two copies (`swap`).

Polyak & Juditsky, "Acceleration of stochastic approximation by averaging", SIAM J. Control
Optim. 1992 (uniform averaging of the iterates); the exponential average with bias correction
is the one Adam applies to its moments (Kingma & Ba, ICLR 2015, sec. 3).
"""
from __future__ import annotations

import contextlib

import numpy as np

from ..backend import kernel


def _lerp_(avg, params, weight: float) -> None:
    """avg += weight * (params - avg), in place, as ONE fused pass over memory.

    It is the SGD kernel with lr = -weight and an L2 coefficient of -1 (docs/KERNELS.md:
    p -= lr * (g + l2 * p)), i.e. avg -= -weight * (params - avg): one read of each array and one
    write instead of the three passes (and a temporary) NumPy needs. Measured on 10M float32
    values: 12.0 ms vs 17-20 ms for subtract/multiply/add on a loaded 2-core machine."""
    kernel("sgd_step", like=avg)(avg, params, -float(weight), -1.0, 0.0)


class _Averager:
    def __init__(self, arena):
        self.arena = arena
        self.xp = arena.xp

    def averaged(self):
        """The averaged parameters as a flat array laid out like arena.data (a fresh array)."""
        raise NotImplementedError

    def copy_to(self, arena=None) -> None:
        """Overwrite the arena's parameters with the average (e.g. once, at the end of training)."""
        arena = arena or self.arena
        if arena.size != self.arena.size:
            raise ValueError(f"{type(self).__name__}.copy_to: arena has {arena.size} values, expected {self.arena.size}")
        arena.data[...] = self.averaged()

    @contextlib.contextmanager
    def swap(self):
        """Evaluate with the averaged weights inside the block; the training weights are restored
        exactly afterwards (also when the block raises)."""
        backup = self.xp.array(self.arena.data, copy=True)
        self.arena.data[...] = self.averaged()
        try:
            yield self.arena
        finally:
            self.arena.data[...] = backup

    def _check_loaded(self, name: str, value):
        value = self.xp.asarray(value)
        if value.shape != self.arena.data.shape:
            raise ValueError(f"{type(self).__name__}.load_state_dict({name!r}): expected shape "
                             f"{self.arena.data.shape} (the arena), got {value.shape}")
        return value.astype(self.arena.data.dtype, copy=True)


class EMA(_Averager):
    """shadow <- decay * shadow + (1 - decay) * params after each optimizer step (`update()`).

    Without bias correction the shadow starts at the current parameters. With
    bias_correction=True it starts at zero and the average is shadow / (1 - decay^t) after t
    updates, which removes the pull towards the initial value in the first ~1/(1-decay) steps."""

    def __init__(self, arena, decay: float = 0.999, bias_correction: bool = False):
        super().__init__(arena)
        if isinstance(decay, bool) or not isinstance(decay, (int, float, np.floating)) or not 0 <= decay < 1:
            raise ValueError(f"EMA(decay): expected a float in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.bias_correction = bool(bias_correction)
        self.num_updates = 0
        if self.bias_correction:
            self.shadow = self.xp.zeros_like(arena.data)
        else:
            self.shadow = self.xp.array(arena.data, copy=True)

    def update(self) -> None:
        # shadow += (1 - decay) * (params - shadow): the same recurrence, in place
        _lerp_(self.shadow, self.arena.data, 1.0 - self.decay)
        self.num_updates += 1

    def averaged(self):
        if self.bias_correction:
            if self.num_updates == 0:
                raise RuntimeError("EMA.averaged: bias-corrected average is undefined before the first update()")
            return self.shadow / (1.0 - self.decay ** self.num_updates)
        return self.xp.array(self.shadow, copy=True)

    def state_dict(self) -> dict:
        return {"shadow": np.array(self.shadow if self.xp is np else self.shadow.get()),
                "num_updates": self.num_updates, "decay": self.decay, "bias_correction": self.bias_correction}

    def load_state_dict(self, state: dict) -> None:
        if bool(state["bias_correction"]) != self.bias_correction:
            raise ValueError(f"EMA.load_state_dict: state has bias_correction={bool(state['bias_correction'])}, "
                             f"this EMA has {self.bias_correction}")
        self.shadow = self._check_loaded("shadow", state["shadow"])
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])


class PolyakAverage(_Averager):
    """Uniform running mean of the parameters over the updates at steps >= start_step:
    avg <- avg + (params - avg) / n after the n-th included update (`update(step)`)."""

    def __init__(self, arena, start_step: int = 0):
        super().__init__(arena)
        if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)) or start_step < 0:
            raise ValueError(f"PolyakAverage(start_step): expected an int >= 0, got {start_step!r}")
        self.start_step = int(start_step)
        self.count = 0
        self.avg = self.xp.zeros_like(arena.data)

    def update(self, step: int) -> None:
        """Call after the optimizer step numbered `step`; steps before start_step are ignored."""
        if step < self.start_step:
            return
        self.count += 1
        _lerp_(self.avg, self.arena.data, 1.0 / self.count)

    def averaged(self):
        if self.count == 0:
            raise RuntimeError(f"PolyakAverage.averaged: no update at a step >= start_step={self.start_step} yet")
        return self.xp.array(self.avg, copy=True)

    def state_dict(self) -> dict:
        return {"avg": np.array(self.avg if self.xp is np else self.avg.get()),
                "count": self.count, "start_step": self.start_step}

    def load_state_dict(self, state: dict) -> None:
        self.avg = self._check_loaded("avg", state["avg"])
        self.count = int(state["count"])
        self.start_step = int(state["start_step"])
