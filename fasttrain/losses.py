"""Losses: callables `loss(logits, target) -> (value: float, dlogits)`, averaged over the batch.

- SoftmaxCrossEntropy: fused softmax + negative log-likelihood (kernel `softmax_xent`); with
  PyTorch's options (class `weight`, `label_smoothing`, `ignore_index`, `reduction`) the kernel
  `softmax_xent_weighted`, under torch.nn.functional.cross_entropy's exact semantics.
- BinaryCrossEntropyWithLogits: sigmoid + binary cross-entropy, in the stable form
  max(x, 0) - x*y + log1p(exp(-|x|)).
- MSE, L1: mean squared / absolute error over all elements (for (N,) targets: over the batch).
- MulticlassHinge: the Weston-Watkins multiclass SVM loss, sum_{j != y} max(0, x_j - x_y + margin).

Inputs are validated here (the kernels trust them). A non-finite loss raises FloatingPointError
unless the loss is built with check_finite=False: it almost always means a diverging run.
"""
from __future__ import annotations

import numpy as np

from .backend import kernel
from .nn._util import array_module

_FLOATS = (np.float32, np.float64)


class Loss:
    def __init__(self, check_finite: bool = True):
        self.check_finite = bool(check_finite)

    @property
    def name(self) -> str:
        return type(self).__name__

    def __call__(self, logits, target):
        value, dlogits = self._compute(*self._validate(logits, target))
        # reduction='none' (SoftmaxCrossEntropy) gives one loss per row, an array
        value = value if hasattr(value, "shape") else float(value)
        if self.check_finite and not bool(np.all(np.isfinite(value))):
            raise FloatingPointError(
                f"{self.name}: the loss is {value}; the learning rate is probably too high (or the inputs "
                "hold NaN/inf). Lower the learning rate, or build the loss with check_finite=False to "
                "let it through.")
        return value, dlogits

    forward = __call__

    def _logits(self, logits, ndim=None):
        if getattr(logits, "dtype", None) not in _FLOATS:
            raise TypeError(f"{self.name}(logits): expected a float32 or float64 array, got "
                            f"{getattr(logits, 'dtype', type(logits).__name__)}")
        if ndim is not None and logits.ndim != ndim:
            raise ValueError(f"{self.name}(logits): expected a 2-D array (N, C), got shape {tuple(logits.shape)}")
        if logits.ndim == 0 or logits.shape[0] == 0:
            raise ValueError(f"{self.name}(logits): expected a non-empty batch, got shape {tuple(logits.shape)}")
        return np.ascontiguousarray(logits)

    def _validate(self, logits, target):
        raise NotImplementedError

    def _compute(self, logits, target):
        raise NotImplementedError


class _Classification(Loss):
    """Logits (N, C) and integer labels (N,) in [0, C) (or equal to `ignore_index`, where a loss
    has one)."""

    ignore_index: int | None = None

    def _validate(self, logits, labels):
        logits = self._logits(logits, ndim=2)
        n, c = logits.shape
        labels = np.asarray(labels) if not hasattr(labels, "dtype") else labels
        if labels.dtype.kind not in "iu":
            raise TypeError(f"{self.name}(target): expected integer class labels, got dtype {labels.dtype}")
        if tuple(labels.shape) != (n,):
            raise ValueError(f"{self.name}(target): expected labels of shape ({n},) for logits {tuple(logits.shape)}, "
                             f"got {tuple(labels.shape)}")
        bad = (labels < 0) | (labels >= c)
        if self.ignore_index is not None:
            bad &= labels != self.ignore_index
        if bad.any():
            i = int(np.argmax(bad))
            also = "" if self.ignore_index is None else f" or the ignore_index {self.ignore_index}"
            raise ValueError(f"{self.name}(target): label {int(labels[i])} at index {i} is out of range; "
                             f"expected class labels in [0, {c}){also} for logits with C={c}")
        return logits, np.ascontiguousarray(labels, dtype=np.int64)


REDUCTIONS = ("mean", "sum", "none")


class SoftmaxCrossEntropy(_Classification):
    """-log softmax(x)_y averaged over the batch; at uniform logits it is ln C (a sanity check
    for a freshly initialized classifier).

    PyTorch's options, with torch.nn.functional.cross_entropy's semantics:
    - weight (C,): class weights; row i costs w_{y_i} times its loss, and reduction='mean' divides
      by the sum of w_{y_i} over the rows not ignored (not by N);
    - label_smoothing eps in [0, 1]: the target is (1 - eps) onehot(y) + eps / C (each class term
      weighted by its w_c too);
    - ignore_index (default -100, as PyTorch): rows with this label cost 0, get a zero gradient
      and do not count in the mean (all rows ignored: the mean is NaN, as in PyTorch, and the
      gradient zero);
    - reduction: 'mean' | 'sum' | 'none'. With 'none' the value is the (N,) array of row losses and
      dlogits row i is the gradient of row i's loss (scale it by the upstream gradient per row).
    Without any of them (or labels never equal to ignore_index) the plain fused kernel runs."""

    def __init__(self, weight=None, label_smoothing: float = 0.0, ignore_index: int = -100,
                 reduction: str = "mean", check_finite: bool = True):
        super().__init__(check_finite)
        if reduction not in REDUCTIONS:
            raise ValueError(f"SoftmaxCrossEntropy(reduction): expected one of {REDUCTIONS}, got {reduction!r}")
        eps = label_smoothing
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not 0.0 <= eps <= 1.0:
            raise ValueError(f"SoftmaxCrossEntropy(label_smoothing): expected a number in [0, 1], got {eps!r}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"SoftmaxCrossEntropy(ignore_index): expected an int, got {ignore_index!r}")
        if weight is not None:
            host = getattr(weight, "get", None)
            weight = np.asarray(host() if host is not None else weight, dtype=np.float64)
            if weight.ndim != 1 or weight.size == 0 or not np.all(np.isfinite(weight)):
                raise ValueError(f"SoftmaxCrossEntropy(weight): expected a 1-D array of C finite class weights, "
                                 f"got shape {weight.shape}" + ("" if weight.ndim != 1 else " with non-finite values"))
        self.weight, self.label_smoothing = weight, float(eps)
        self.ignore_index, self.reduction = int(ignore_index), reduction

    def _compute(self, logits, labels):
        n, c = logits.shape
        ignored = labels == self.ignore_index
        dlogits = np.empty_like(logits)
        if self.weight is None and not self.label_smoothing and self.reduction == "mean" and not ignored.any():
            value = kernel("softmax_xent", like=logits)(logits, labels, dlogits)
            return value, dlogits
        if self.weight is not None and self.weight.shape != (c,):
            raise ValueError(f"{self.name}(weight): expected {c} class weights for logits {tuple(logits.shape)}, "
                             f"got {self.weight.shape[0]}")
        xp = array_module(logits)
        host_w = np.ones(c) if self.weight is None else self.weight
        scale = 1.0
        if self.reduction == "mean":
            # PyTorch's weighted mean: the sum of the weights of the targets that count
            kept = labels[~ignored]
            total = float(host_w[getattr(kept, "get", lambda: kept)()].sum())
            scale = 1.0 / total if total else 0.0
        row_loss = xp.empty(n, dtype=np.float64)
        w = xp.asarray(host_w, dtype=logits.dtype)
        kernel("softmax_xent_weighted", like=logits)(logits, labels, w, self.label_smoothing, self.ignore_index,
                                                    scale, dlogits, row_loss)
        if self.reduction == "none":
            return row_loss.astype(logits.dtype), dlogits
        if self.reduction == "mean" and scale == 0.0:
            return float("nan"), dlogits   # nothing counts: 0 / 0, as PyTorch (and a zero gradient)
        return float(row_loss.sum()) * scale, dlogits


class MulticlassHinge(_Classification):
    """Weston & Watkins 1999 multiclass SVM: L_i = sum_{j != y_i} max(0, x_ij - x_iy_i + margin).
    Subgradient: +1 for each violating class j, minus their count for the true class."""

    def __init__(self, margin: float = 1.0, check_finite: bool = True):
        super().__init__(check_finite)
        self.margin = float(margin)

    def _compute(self, x, labels):
        n = x.shape[0]
        rows = np.arange(n)
        margins = x - x[rows, labels][:, None] + x.dtype.type(self.margin)
        margins[rows, labels] = 0
        violated = margins > 0
        # np.maximum (not np.where on `violated`) so a NaN logit yields a NaN loss, not a silent 0
        value = np.sum(np.maximum(margins, 0), dtype=np.float64) / n
        dlogits = violated.astype(x.dtype)
        dlogits[rows, labels] = -violated.sum(axis=1)
        dlogits /= n
        return value, dlogits


class _Elementwise(Loss):
    """Logits of any shape (N, ...) and a float target of the same shape; mean over all elements."""

    def _validate(self, logits, target):
        logits = self._logits(logits)
        target = np.asarray(target) if not hasattr(target, "dtype") else target
        if tuple(target.shape) != tuple(logits.shape):
            raise ValueError(f"{self.name}(target): expected the shape of logits {tuple(logits.shape)}, "
                             f"got {tuple(target.shape)}")
        if target.dtype.kind not in "fiub":
            raise TypeError(f"{self.name}(target): expected a numeric array, got dtype {target.dtype}")
        return logits, target.astype(logits.dtype, copy=False)


class BinaryCrossEntropyWithLogits(_Elementwise):
    """-[y log sigma(x) + (1-y) log(1 - sigma(x))] for targets y in [0, 1], in the form
    max(x, 0) - x*y + log1p(exp(-|x|)), which never exponentiates a positive number.
    Gradient: sigma(x) - y."""

    def _validate(self, logits, target):
        logits, target = super()._validate(logits, target)
        if ((target < 0) | (target > 1)).any():
            raise ValueError(f"{self.name}(target): expected targets in [0, 1], got values in "
                             f"[{float(target.min())}, {float(target.max())}]")
        return logits, target

    def _compute(self, x, y):
        per = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
        value = np.sum(per, dtype=np.float64) / x.size
        e = np.exp(-np.abs(x))
        sigma = np.where(x >= 0, 1 / (1 + e), e / (1 + e))   # stable sigmoid, as in the kernels
        return value, ((sigma - y) / x.dtype.type(x.size)).astype(x.dtype, copy=False)


class MSE(_Elementwise):
    """mean((x - y)^2); gradient 2 (x - y) / size."""

    def _compute(self, x, y):
        d = x - y
        value = np.sum(d * d, dtype=np.float64) / x.size
        return value, (d * x.dtype.type(2.0 / x.size)).astype(x.dtype, copy=False)


class L1(_Elementwise):
    """mean(|x - y|) (mean absolute error); subgradient sign(x - y), 0 where x == y."""

    def _compute(self, x, y):
        d = x - y
        value = np.sum(np.abs(d), dtype=np.float64) / x.size
        return value, (np.sign(d) * x.dtype.type(1.0 / x.size)).astype(x.dtype, copy=False)


MAE = L1
