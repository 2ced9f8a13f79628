"""Numerical gradient checks by central differences in float64."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GradcheckResult:
    name: str
    max_rel_error: float
    worst_index: tuple
    analytic: float
    numeric: float
    passed: bool

    def __str__(self):
        verdict = "ok" if self.passed else "FAILED"
        return (f"gradcheck {self.name}: max relative error {self.max_rel_error:.2e} at {self.worst_index} "
                f"(analytic {self.analytic:.6g}, numeric {self.numeric:.6g}) -> {verdict}")


def rel_error(a, b) -> np.ndarray:
    """|a-b| / max(|a|+|b|, 1e-8): the standard relative error for gradient checks."""
    return np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-8)


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6, max_checks: int | None = None, seed: int = 0):
    """Central-difference gradient of scalar f() w.r.t. x (modified in place, restored).
    With max_checks, only that many random entries are probed; others are NaN."""
    grad = np.full(x.shape, np.nan)
    flat = x.reshape(-1)
    idx = np.arange(flat.size)
    if max_checks is not None and flat.size > max_checks:
        idx = np.random.default_rng(seed).choice(flat.size, max_checks, replace=False)
    g = grad.reshape(-1)
    for i in idx:
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return grad


def compare(name: str, analytic, numeric, tol: float) -> GradcheckResult:
    analytic = np.asarray(analytic, dtype=np.float64)
    mask = ~np.isnan(numeric)
    if analytic.shape != numeric.shape:
        raise ValueError(f"gradcheck {name}: analytic shape {analytic.shape} != numeric shape {numeric.shape}")
    if not mask.any():
        return GradcheckResult(name, 0.0, (), 0.0, 0.0, True)
    err = np.where(mask, rel_error(analytic, np.where(mask, numeric, 0.0)), -1.0)
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    e = float(err[worst])
    return GradcheckResult(name, e, tuple(int(i) for i in worst), float(analytic[worst]), float(numeric[worst]),
                           bool(e <= tol))


def gradcheck(module, x: np.ndarray, seed: int = 0, eps: float = 1e-6, tol: float = 1e-5,
              max_checks: int | None = 200, check_params: bool = True) -> list[GradcheckResult]:
    """Check a module's backward against central differences, in float64.

    The module must be bound to a float64 arena (`ParamArena.for_model(m, dtype=np.float64)`)
    if it has parameters. Loss is sum(y * r) for a fixed random r, so dL/dy = r.
    Returns one result per checked tensor (input first, then each parameter).
    """
    x = np.array(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    counters = module.draw_counters()

    def forward():
        # every forward replays the first one's random draws (dropout masks advance per forward)
        module.set_draw_counters(counters)
        return module.forward(x)

    y = forward()
    r = rng.standard_normal(np.shape(y))

    def loss():
        return float(np.sum(forward() * r))

    params = module.parameters() if check_params else []
    for p in params:
        if p.data is None:
            raise ValueError(f"gradcheck: parameter {p.name} is not bound; call ParamArena.for_model(module, dtype=np.float64)")
        if p.data.dtype != np.float64:
            raise ValueError(f"gradcheck: parameter {p.name} is {p.data.dtype}; expected float64 for a gradient check")
        p.grad[...] = 0
    forward()
    dx = module.backward(r)
    results = [compare("input", dx, numeric_grad(loss, x, eps, max_checks, seed), tol)]
    for p in params:
        analytic = np.array(p.grad)
        results.append(compare(p.name, analytic, numeric_grad(loss, p.data, eps, max_checks, seed), tol))
    module.set_draw_counters(counters)   # a check consumes no draws: the next forward is as without it
    return results


def gradcheck_loss(loss_fn, logits: np.ndarray, target, eps: float = 1e-6, tol: float = 1e-5) -> GradcheckResult:
    """Check a loss's returned gradient against central differences of its value."""
    logits = np.array(logits, dtype=np.float64)
    _, dlogits = loss_fn(logits, target)
    numeric = numeric_grad(lambda: float(loss_fn(logits, target)[0]), logits, eps)
    return compare(type(loss_fn).__name__, dlogits, numeric, tol)
