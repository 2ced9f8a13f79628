"""Optimizers over the flat parameter arena (one fused kernel call per parameter group)."""
import math

from .base import Optimizer
from .optimizers import SGD, AdaGrad, Adam, AdamW, Momentum, Nesterov, RMSProp


def clip_grad_norm(arena, max_norm: float) -> float:
    """Scale the whole gradient arena so its global L2 norm is at most max_norm (Pascanu et al.
    2013); returns the norm before clipping. The arena makes this one norm and one scale over a
    single buffer. A non-finite norm raises instead of spreading NaN into every gradient."""
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm > 0 \
            or not math.isfinite(max_norm):
        raise ValueError(f"clip_grad_norm(max_norm): expected a finite number > 0, got {max_norm!r}")
    norm = float(arena.xp.linalg.norm(arena.grad))
    if not math.isfinite(norm):
        raise FloatingPointError(f"clip_grad_norm: the gradient norm is {norm}; a loss or gradient overflowed "
                                 "(try a smaller lr)")
    if norm > max_norm:
        arena.grad *= max_norm / norm
    return norm


__all__ = ["Optimizer", "SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp", "Adam", "AdamW", "clip_grad_norm"]
