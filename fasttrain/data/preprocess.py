"""Preprocessing fitted on training data only, then applied unchanged to validation and test
data (statistics from held-out data would leak it into training; cs231n "Data preprocessing").

ChannelStandardizer and MeanImage work on image batches (N, C, H, W) (or (N, C) for the
standardizer); PCA and Whitening on vectors (N, D): reshape images with x.reshape(len(x), -1).
Statistics are computed in float64; transforms return the input's float dtype.
Each has fit / transform (also `__call__`) / state_dict / load_state_dict.
"""
from __future__ import annotations

import numpy as np


def _float_array(name: str, x) -> np.ndarray:
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"{name}: expected a numeric array, got dtype {x.dtype}")
    return x


def _out_dtype(x):
    return x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32


class _Fitted:
    _state: tuple[str, ...] = ()

    def _require_fit(self):
        if getattr(self, self._state[0]) is None:
            raise RuntimeError(f"{type(self).__name__}: call fit(x_train) before transforming")

    def __call__(self, x):
        return self.transform(x)

    def state_dict(self) -> dict:
        self._require_fit()
        return {k: np.array(getattr(self, k)) for k in self._state}

    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self._state) - set(state))
        if missing:
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing {missing}")
        for k in self._state:
            setattr(self, k, np.asarray(state[k], dtype=np.float64))


class ChannelStandardizer(_Fitted):
    """x -> (x - mean[c]) / (std[c] + eps), statistics per channel over N and the spatial axes."""

    _state = ("mean", "std")

    def __init__(self, eps: float = 1e-8):
        self.eps = float(eps)
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def fit(self, x) -> "ChannelStandardizer":
        x = _float_array("ChannelStandardizer.fit(x)", x)
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"ChannelStandardizer.fit(x): expected (N, C, ...) with N > 0, got shape {x.shape}")
        axes = (0,) + tuple(range(2, x.ndim))
        self.mean = x.mean(axis=axes, dtype=np.float64)
        self.std = x.std(axis=axes, dtype=np.float64)
        return self

    def transform(self, x):
        self._require_fit()
        x = _float_array("ChannelStandardizer.transform(x)", x)
        c = self.mean.shape[0]
        if x.ndim < 2 or x.shape[1] != c:
            raise ValueError(f"ChannelStandardizer: fitted on {c} channels, expected (N, {c}, ...), got shape {x.shape}")
        shape = (1, c) + (1,) * (x.ndim - 2)
        return ((x - self.mean.reshape(shape)) / (self.std.reshape(shape) + self.eps)).astype(_out_dtype(x))

    def inverse_transform(self, z):
        self._require_fit()
        z = np.asarray(z)
        shape = (1, self.mean.shape[0]) + (1,) * (z.ndim - 2)
        return (z * (self.std.reshape(shape) + self.eps) + self.mean.reshape(shape)).astype(_out_dtype(z))


class MeanImage(_Fitted):
    """Subtract the mean training image (every pixel and channel its own mean; AlexNet)."""

    _state = ("mean",)

    def __init__(self):
        self.mean: np.ndarray | None = None

    def fit(self, x) -> "MeanImage":
        x = _float_array("MeanImage.fit(x)", x)
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"MeanImage.fit(x): expected (N, ...) with N > 0, got shape {x.shape}")
        self.mean = x.mean(axis=0, dtype=np.float64)
        return self

    def transform(self, x):
        self._require_fit()
        x = _float_array("MeanImage.transform(x)", x)
        if x.shape[1:] != self.mean.shape:
            raise ValueError(f"MeanImage: fitted on examples of shape {self.mean.shape}, expected (N, "
                             f"{', '.join(map(str, self.mean.shape))}), got shape {x.shape}")
        return (x - self.mean).astype(_out_dtype(x))


class PCA(_Fitted):
    """Project centred vectors onto the top principal axes of the training covariance.

    n_components: None (all D), an int k (1 <= k <= D), or a float f in (0, 1] (the fewest
    components whose eigenvalues sum to at least f of the total variance). The covariance is
    the biased one (divided by N), so the projected training data has covariance diag(eigvals)."""

    _state = ("mean", "components", "eigvals")

    def __init__(self, n_components=None):
        if n_components is not None:
            is_int = isinstance(n_components, (int, np.integer)) and not isinstance(n_components, bool)
            is_frac = isinstance(n_components, (float, np.floating)) and 0 < n_components <= 1
            if not ((is_int and n_components >= 1) or is_frac):
                raise ValueError(f"{type(self).__name__}(n_components): expected None, an int >= 1 or a variance "
                                 f"fraction in (0, 1], got {n_components!r}")
        self.n_components = n_components
        self.mean: np.ndarray | None = None        # (D,)
        self.components: np.ndarray | None = None  # (D, k): column j is the j-th principal axis
        self.eigvals: np.ndarray | None = None     # (k,) descending
        self.explained_variance_ratio: np.ndarray | None = None

    def _check_vectors(self, where: str, x) -> np.ndarray:
        x = _float_array(f"{type(self).__name__}.{where}(x)", x)
        if x.ndim != 2:
            raise ValueError(f"{type(self).__name__}.{where}(x): expected vectors (N, D), got shape {x.shape}; "
                             "flatten images with x.reshape(len(x), -1)")
        if self.mean is not None and where != "fit" and x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"{type(self).__name__}.{where}(x): fitted on D={self.mean.shape[0]}, "
                             f"expected (N, {self.mean.shape[0]}), got shape {x.shape}")
        return x

    def fit(self, x):
        x = self._check_vectors("fit", x)
        n, d = x.shape
        if n == 0:
            raise ValueError(f"{type(self).__name__}.fit(x): expected at least one example, got shape {x.shape}")
        self.mean = x.mean(axis=0, dtype=np.float64)
        xc = x.astype(np.float64) - self.mean
        vals, vecs = np.linalg.eigh(xc.T @ xc / n)
        order = np.argsort(vals)[::-1]
        vals = np.clip(vals[order], 0, None)   # round-off can make zero eigenvalues slightly negative
        vecs = vecs[:, order]
        # fix each axis's sign (largest-magnitude entry positive) so fits are reproducible
        signs = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(d)])
        vecs = vecs * np.where(signs == 0, 1, signs)
        total = vals.sum()
        k = self._choose_k(vals, total, d)
        self.components, self.eigvals = vecs[:, :k], vals[:k]
        self.explained_variance_ratio = vals[:k] / total if total > 0 else np.zeros(k)
        return self

    def _choose_k(self, vals, total, d) -> int:
        nc = self.n_components
        if nc is None:
            return d
        if isinstance(nc, (int, np.integer)):
            if nc > d:
                raise ValueError(f"{type(self).__name__}(n_components={nc}): more components than dimensions D={d}")
            return int(nc)
        if total == 0:
            return 1
        # the small tolerance keeps f = 1.0 from asking for zero-variance directions through round-off
        return int(np.searchsorted(np.cumsum(vals) / total, nc - 1e-12) + 1)

    def transform(self, x):
        self._require_fit()
        x = self._check_vectors("transform", x)
        return ((x - self.mean) @ self.components).astype(_out_dtype(x))

    def inverse_transform(self, z):
        self._require_fit()
        z = np.asarray(z)
        k = self.components.shape[1]
        if z.ndim != 2 or z.shape[1] != k:
            raise ValueError(f"{type(self).__name__}.inverse_transform(z): expected (N, {k}), got shape {z.shape}")
        return (z @ self.components.T + self.mean).astype(_out_dtype(z))


class Whitening(PCA):
    """PCA whitening: project, then divide component j by sqrt(eigval_j + eps), so the training
    data has covariance diag(eigval / (eigval + eps)) ~ I. With zca=True rotate back to the
    input axes (x -> U diag(1/sqrt(eigval + eps)) U^T (x - mean)): ZCA whitening, which keeps
    images looking like images (Bell & Sejnowski 1997; Krizhevsky 2009, appendix). eps
    regularizes directions of tiny variance, which would otherwise be amplified into noise."""

    def __init__(self, n_components=None, eps: float = 1e-5, zca: bool = False):
        super().__init__(n_components)
        if not eps >= 0:
            raise ValueError(f"Whitening(eps): expected eps >= 0, got {eps!r}")
        self.eps = float(eps)
        self.zca = bool(zca)

    def fit(self, x):
        super().fit(x)
        if self.eps == 0 and np.any(self.eigvals == 0):
            raise ValueError("Whitening.fit: a kept direction has zero variance and eps = 0; use eps > 0 "
                             "or fewer components")
        return self

    def transform(self, x):
        self._require_fit()
        x = self._check_vectors("transform", x)
        z = ((x - self.mean) @ self.components) / np.sqrt(self.eigvals + self.eps)
        if self.zca:
            z = z @ self.components.T
        return z.astype(_out_dtype(x))

    def inverse_transform(self, z):
        self._require_fit()
        z = np.asarray(z, dtype=np.float64)
        if self.zca:
            d = self.components.shape[0]
            if z.ndim != 2 or z.shape[1] != d:
                raise ValueError(f"Whitening.inverse_transform(z): ZCA output is (N, {d}), got shape {z.shape}")
            z = z @ self.components
        return super().inverse_transform(z * np.sqrt(self.eigvals + self.eps))
