"""Optimizers over the flat parameter arena (one fused kernel call per parameter group)."""
from .base import Optimizer
from .optimizers import SGD, AdaGrad, Adam, AdamW, Momentum, Nesterov, RMSProp


def clip_grad_norm(arena, max_norm: float) -> float:
    """Scale the whole gradient arena so its L2 norm is at most max_norm; returns the norm before."""
    if not max_norm > 0:
        raise ValueError(f"clip_grad_norm(max_norm): expected a positive number, got {max_norm!r}")
    norm = float(arena.xp.linalg.norm(arena.grad))
    if norm > max_norm:
        arena.grad *= max_norm / (norm + 1e-12)
    return norm


__all__ = ["Optimizer", "SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp", "Adam", "AdamW", "clip_grad_norm"]
