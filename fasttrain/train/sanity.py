"""Sanity checks before a long run (cs231n notes, "Before learning: sanity checks Tips/Tricks"):

1. initial loss: with small random weights a softmax classifier predicts ~uniform
   probabilities, so the cross-entropy starts near ln(C) for C classes. Far above: the logits are
   too large (weights initialized too large); far below: suspicious (a label leak or a bug).
2. overfit a tiny subset: 20 examples, no regularization, no dropout, must reach 100% training
   accuracy within a bounded number of steps; if not, the model or the optimizer is broken (or
   the learning rate is off).
3. gradient check: the model's backward against central differences, in float64, on a tiny
   batch (fasttrain.check.gradcheck), plus the loss's own gradient (gradcheck_loss).

Each check returns a CheckResult with a verdict and a message saying what to try."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class CheckResult:
    name: str
    passed: bool
    message: str
    value: float | None = None

    def __str__(self):
        return f"[{'PASS' if self.passed else 'FAIL'}] {self.name}: {self.message}"


def check_initial_loss(model, x, y, num_classes: int, loss_fn=None, rel_tol: float = 0.25) -> CheckResult:
    """Loss of the untrained model (bound to an arena) on (x, y) vs ln(C), within rel_tol."""
    from ..losses import SoftmaxCrossEntropy

    loss_fn = loss_fn or SoftmaxCrossEntropy(check_finite=False)
    # training mode, as the first step sees it (BN normalizes with the batch statistics; build
    # the model without dropout, so the check does not depend on the mask)
    model.train()
    logits = model.forward(model.arena.xp.asarray(x))
    loss = float(loss_fn(logits, model.arena.xp.asarray(y))[0])
    expected = math.log(num_classes)
    rel = abs(loss - expected) / expected
    ok = math.isfinite(loss) and rel <= rel_tol
    msg = f"loss {loss:.4f} vs ln({num_classes}) = {expected:.4f} (off by {rel:.0%}, tolerance {rel_tol:.0%})"
    if not ok:
        if not math.isfinite(loss) or loss > expected:
            msg += ("; the initial logits are too large: the weights are probably initialized too large "
                    "(e.g. use He/Xavier scaling, or scale the last layer down)")
        else:
            msg += "; the loss is below chance before training: check for a label leak or a bug in the loss"
    return CheckResult("initial loss", ok, msg, loss)


def check_overfit(model, arena, x, y, lr: float = 1e-2, max_steps: int = 300, optimizer: str = "adam") -> CheckResult:
    """Full-batch training on (x, y) (about 20 examples) without weight decay until every
    example is classified correctly (train-mode logits), within max_steps."""
    from .. import optim
    from ..losses import SoftmaxCrossEntropy

    classes = {k.lower(): getattr(optim, k) for k in dir(optim) if isinstance(getattr(optim, k), type)}
    opt = classes[optimizer.lower()](arena, lr=lr, weight_decay=0.0)
    loss_fn = SoftmaxCrossEntropy(check_finite=False)
    xp = arena.xp
    xb, yb = xp.asarray(x), xp.asarray(y)
    model.train()
    loss = math.nan
    for step in range(1, max_steps + 1):
        model.set_step(step)
        arena.zero_grad()
        logits = model.forward(xb)
        loss, dlogits = loss_fn(logits, yb)
        if not math.isfinite(loss):
            return CheckResult("overfit tiny subset", False, f"the loss became {loss} at step {step}: the learning "
                               f"rate lr={lr:g} is probably too high", float(loss))
        if int((logits.argmax(axis=1) == yb).sum()) == len(yb):
            return CheckResult("overfit tiny subset", True, f"100% training accuracy on {len(yb)} examples after "
                               f"{step - 1} steps (loss {loss:.4f})", float(step - 1))
        model.backward(dlogits)
        opt.step()
    acc = float((model.forward(xb).argmax(axis=1) == yb).mean())
    return CheckResult("overfit tiny subset", False, f"only {acc:.0%} training accuracy on {len(yb)} examples after "
                       f"{max_steps} steps (loss {loss:.4f}); the model cannot fit even a tiny set: check the "
                       f"learning rate (lr={lr:g}) and the backward passes", acc)


def check_gradients(model, x, y, seed: int = 0, tol: float = 1e-4, max_checks: int = 30) -> CheckResult:
    """gradcheck of `model` (bound to a float64 arena) on x plus gradcheck_loss of the softmax
    cross-entropy; passes when every checked tensor's max relative error is <= tol."""
    from ..check import gradcheck, gradcheck_loss
    from ..losses import SoftmaxCrossEntropy

    if model.arena.dtype != np.float64:
        raise ValueError(f"check_gradients: expected a model bound to a float64 arena, got {model.arena.dtype}")
    results = gradcheck(model, np.asarray(x, np.float64), seed=seed, tol=tol, max_checks=max_checks)
    logits = model.forward(np.asarray(x, np.float64))
    results.append(gradcheck_loss(SoftmaxCrossEntropy(), logits, np.asarray(y), tol=tol))
    worst = max(results, key=lambda r: r.max_rel_error)
    failed = [r for r in results if not r.passed]
    if failed:
        msg = (f"{len(failed)} of {len(results)} tensors exceed relative error {tol:g}; worst: {worst}; "
               f"failing: {', '.join(r.name for r in failed)}")
    else:
        msg = f"{len(results)} tensors, worst relative error {worst.max_rel_error:.2e} ({worst.name}) <= {tol:g}"
    return CheckResult("gradient check (float64)", not failed, msg, worst.max_rel_error)


def run_checks(cfg, n_overfit: int = 20, n_gradcheck: int = 2, max_steps: int = 300) -> list[CheckResult]:
    """The three checks for the model and data a Config describes."""
    import fasttrain as ft

    from ..data import ChannelStandardizer, load_dataset
    from ..models import build

    if cfg.threads is not None:
        ft.set_num_threads(cfg.threads)
    if cfg.backend is not None:
        ft.set_backend(cfg.backend)
    data = load_dataset(cfg.dataset, cfg.data_path, cfg.val_fraction, cfg.seed, image_size=cfg.image_size).limit(cfg.limit)
    norm = ChannelStandardizer().fit(data.x_train)
    x, y = norm(data.x_train), data.y_train
    results = []

    model = build(cfg.model, data.input_shape, data.num_classes, 0.0, seed=cfg.seed)
    ft.ParamArena.for_model(model, seed=cfg.seed)
    results.append(check_initial_loss(model, x[:256], y[:256], data.num_classes))

    model = build(cfg.model, data.input_shape, data.num_classes, 0.0, seed=cfg.seed)  # dropout off
    arena = ft.ParamArena.for_model(model, seed=cfg.seed)
    results.append(check_overfit(model, arena, x[:n_overfit], y[:n_overfit], lr=cfg.lr, max_steps=max_steps,
                                 optimizer=cfg.optimizer))

    model = build(cfg.model, data.input_shape, data.num_classes, 0.0, seed=cfg.seed)
    ft.ParamArena.for_model(model, seed=cfg.seed, dtype=np.float64)
    # Gaussian inputs rather than images: flat image regions give exactly equal conv outputs, and
    # ties in max-pooling are kinks where central differences are meaningless
    xg = np.random.default_rng(cfg.seed).standard_normal((n_gradcheck, *data.input_shape))
    results.append(check_gradients(model, xg, y[:n_gradcheck], seed=cfg.seed))
    return results
