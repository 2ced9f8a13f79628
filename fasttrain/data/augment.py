"""Batch data augmentation for NCHW float arrays, and test-time augmentation.

Every transform is `f(x, rng) -> x'` on a whole batch, drawing its randomness from the numpy
Generator it is given, so a seeded generator makes an epoch's augmentation reproducible (the
data loader owns the generator). Inputs are never modified in place. Mixup also changes the
labels, so it has its own signature `mixup(x, y, rng) -> (x', y_a, y_b, lam)`.

References: random crops and flips, PCA lighting noise: Krizhevsky, Sutskever, Hinton, "ImageNet
Classification with Deep CNNs", NIPS 2012, sec. 4.1; random-resized crops: Szegedy et al.,
"Going Deeper with Convolutions", CVPR 2015; Cutout: DeVries & Taylor 2017; Mixup: Zhang et al.,
"mixup: Beyond Empirical Risk Minimization", ICLR 2018.
"""
from __future__ import annotations

import math

import numpy as np

# ITU-R BT.601 luma weights: the grayscale image saturation and contrast jitter blend towards.
_LUMA = np.array([0.299, 0.587, 0.114])


def _check_batch(name: str, x, channels: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a batch (N, C, H, W), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name}: expected a float array, got {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels}-channel images (N, {channels}, H, W), got {x.shape}")
    return x


def _pair(name: str, value) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise ValueError(f"{name}: expected a non-negative int or a pair (h, w) of them, got {value!r}")
    return int(value[0]), int(value[1])


def _probability(name: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) or not 0 <= p <= 1:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {p!r}")
    return float(p)


class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose: expected callables f(x, rng), got {type(t).__name__}")

    def __call__(self, x, rng: np.random.Generator):
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self):
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability p (independently per image)."""

    def __init__(self, p: float = 0.5):
        self.p = _probability("RandomHorizontalFlip(p)", p)

    def __call__(self, x, rng):
        x = _check_batch("RandomHorizontalFlip", x)
        flip = rng.random(x.shape[0]) < self.p
        out = x.copy()
        out[flip] = x[flip, :, :, ::-1]
        return out

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


def _pad(x, ph: int, pw: int, mode: str):
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode=mode)


class RandomCrop:
    """Pad by `padding` on every side ('zero' or 'reflect'), then cut a `size` window at a
    uniformly random offset per image; with size = input size this is a random shift."""

    _MODES = {"zero": "constant", "reflect": "reflect"}

    def __init__(self, size, padding=0, pad_mode: str = "zero"):
        self.size = _pair("RandomCrop(size)", size)
        if 0 in self.size:
            raise ValueError(f"RandomCrop(size): expected positive sizes, got {size!r}")
        self.padding = _pair("RandomCrop(padding)", padding)
        if pad_mode not in self._MODES:
            raise ValueError(f"RandomCrop(pad_mode): expected one of {sorted(self._MODES)}, got {pad_mode!r}")
        self.pad_mode = pad_mode

    def __call__(self, x, rng):
        x = _check_batch("RandomCrop", x)
        n, c, h, w = x.shape
        ph, pw = self.padding
        th, tw = self.size
        if th > h + 2 * ph or tw > w + 2 * pw:
            raise ValueError(f"RandomCrop(size={self.size}, padding={self.padding}): crop larger than the padded "
                             f"input {(h + 2 * ph, w + 2 * pw)} (input shape {x.shape})")
        if self.pad_mode == "reflect" and (ph >= h or pw >= w):
            raise ValueError(f"RandomCrop(padding={self.padding}): reflect padding needs padding < image size {(h, w)}")
        padded = _pad(x, ph, pw, self._MODES[self.pad_mode])
        top = rng.integers(0, h + 2 * ph - th + 1, size=n)
        left = rng.integers(0, w + 2 * pw - tw + 1, size=n)
        # gather every window at once: rows (N, th, 1) and columns (N, 1, tw) index the padded images
        rows = (top[:, None] + np.arange(th))[:, :, None]
        cols = (left[:, None] + np.arange(tw))[:, None, :]
        out = padded[np.arange(n)[:, None, None], :, rows, cols]     # (N, th, tw, C): advanced dims first
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding}, pad_mode={self.pad_mode!r})"


def resize(img, out_h: int, out_w: int, interpolation: str = "bilinear"):
    """Resize (C, H, W) to (C, out_h, out_w). Pixel centres are aligned (half-pixel mapping
    src = (dst + 0.5) * in / out - 0.5, as OpenCV and align_corners=False); bilinear clamps
    at the border, nearest takes the pixel whose area contains the destination centre."""
    c, h, w = img.shape
    if interpolation == "nearest":
        ri = np.minimum(((np.arange(out_h) + 0.5) * h / out_h).astype(np.int64), h - 1)
        ci = np.minimum(((np.arange(out_w) + 0.5) * w / out_w).astype(np.int64), w - 1)
        return img[:, ri[:, None], ci[None, :]]
    if interpolation != "bilinear":
        raise ValueError(f"resize(interpolation): expected 'bilinear' or 'nearest', got {interpolation!r}")

    def axis(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    r0, r1, fr = axis(h, out_h)
    c0, c1, fc = axis(w, out_w)
    fr = fr.astype(img.dtype)[:, None]
    fc = fc.astype(img.dtype)[None, :]
    top = img[:, r0][:, :, c0] * (1 - fc) + img[:, r0][:, :, c1] * fc
    bottom = img[:, r1][:, :, c0] * (1 - fc) + img[:, r1][:, :, c1] * fc
    return top * (1 - fr) + bottom * fr


class RandomResizedCrop:
    """Crop a random region covering a `scale` fraction of the image area with aspect ratio
    (w/h) log-uniform in `ratio`, then resize it back to the input size (or `size`).
    Crop sides are rounded and clipped to the image, so extreme ratios give a smaller area."""

    def __init__(self, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation: str = "bilinear", size=None):
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"RandomResizedCrop(scale): expected (lo, hi) with 0 < lo <= hi <= 1, got {scale!r}")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"RandomResizedCrop(ratio): expected (lo, hi) with 0 < lo <= hi, got {ratio!r}")
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"RandomResizedCrop(interpolation): expected 'bilinear' or 'nearest', got {interpolation!r}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.interpolation = interpolation
        self.size = None if size is None else _pair("RandomResizedCrop(size)", size)

    def __call__(self, x, rng):
        x = _check_batch("RandomResizedCrop", x)
        n, c, h, w = x.shape
        out_h, out_w = self.size or (h, w)
        out = np.empty((n, c, out_h, out_w), dtype=x.dtype)
        area = rng.uniform(*self.scale, size=n) * h * w
        aspect = np.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), size=n))
        ch = np.clip(np.round(np.sqrt(area / aspect)), 1, h).astype(np.int64)
        cw = np.clip(np.round(np.sqrt(area * aspect)), 1, w).astype(np.int64)
        u = rng.random((n, 2))
        top = (u[:, 0] * (h - ch + 1)).astype(np.int64)
        left = (u[:, 1] * (w - cw + 1)).astype(np.int64)
        for i in range(n):   # crop sizes differ per image
            crop = x[i, :, top[i]:top[i] + ch[i], left[i]:left[i] + cw[i]]
            out[i] = resize(crop, out_h, out_w, self.interpolation)
        return out

    def __repr__(self):
        return (f"RandomResizedCrop(scale={self.scale}, ratio={self.ratio}, "
                f"interpolation={self.interpolation!r}, size={self.size})")


class ColorJitter:
    """Random brightness, contrast and saturation for 3-channel (RGB) images, applied in that
    order with one factor per image per property, each factor uniform in [max(0, 1-s), 1+s]:
    brightness scales the pixels; contrast blends with the image's mean luma; saturation blends
    each pixel with its own luma. No clipping: inputs may be standardized (negative) data."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0):
        for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or v < 0:
                raise ValueError(f"ColorJitter({name}): expected a non-negative number, got {v!r}")
        self.brightness, self.contrast, self.saturation = float(brightness), float(contrast), float(saturation)

    @staticmethod
    def _factors(strength, n, rng):
        return rng.uniform(max(0.0, 1 - strength), 1 + strength, size=n)[:, None, None, None]

    def __call__(self, x, rng):
        x = _check_batch("ColorJitter", x, channels=3)
        n = x.shape[0]
        out = x.astype(np.float64)
        luma = _LUMA.reshape(1, 3, 1, 1)
        if self.brightness:
            out = out * self._factors(self.brightness, n, rng)
        if self.contrast:
            mean = (out * luma).sum(axis=1, keepdims=True).mean(axis=(2, 3), keepdims=True)
            out = mean + self._factors(self.contrast, n, rng) * (out - mean)
        if self.saturation:
            gray = (out * luma).sum(axis=1, keepdims=True)
            out = gray + self._factors(self.saturation, n, rng) * (out - gray)
        return out.astype(x.dtype)

    def __repr__(self):
        return f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation})"


class PCANoise:
    """AlexNet lighting noise: add sum_k a_k * lambda_k * v_k to every pixel of an image, with
    (lambda_k, v_k) the eigenpairs of the covariance of pixel colour vectors in the training
    set and a_k ~ N(0, alpha^2) drawn once per image (Krizhevsky et al. 2012, sec. 4.1).
    Call `fit(x_train)` first (training data only)."""

    def __init__(self, alpha: float = 0.1):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)) or alpha < 0:
            raise ValueError(f"PCANoise(alpha): expected a non-negative number, got {alpha!r}")
        self.alpha = float(alpha)
        self.eigvals: np.ndarray | None = None   # (C,) descending
        self.eigvecs: np.ndarray | None = None   # (C, C), column k is v_k

    def fit(self, x) -> "PCANoise":
        x = _check_batch("PCANoise.fit", x)
        if x.shape[0] == 0:
            raise ValueError(f"PCANoise.fit: expected a non-empty batch, got shape {x.shape}")
        pixels = x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1]).astype(np.float64)
        vals, vecs = np.linalg.eigh(np.cov(pixels, rowvar=False, bias=True).reshape(x.shape[1], x.shape[1]))
        order = np.argsort(vals)[::-1]
        self.eigvals = np.clip(vals[order], 0, None)   # round-off can make a zero eigenvalue slightly negative
        self.eigvecs = vecs[:, order]
        return self

    def __call__(self, x, rng):
        if self.eigvals is None:
            raise RuntimeError("PCANoise: call fit(x_train) before transforming")
        x = _check_batch("PCANoise", x, channels=self.eigvals.shape[0])
        a = rng.normal(0.0, self.alpha, size=(x.shape[0], self.eigvals.shape[0]))
        shift = (a * self.eigvals) @ self.eigvecs.T          # (N, C): one colour offset per image
        return (x + shift[:, :, None, None]).astype(x.dtype)

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "eigvals": self.eigvals, "eigvecs": self.eigvecs}

    def __repr__(self):
        return f"PCANoise(alpha={self.alpha}, fitted={self.eigvals is not None})"


class Cutout:
    """Zero a size x size square centred at a uniformly random pixel of each image (clipped at
    the border, so near edges less is cut); DeVries & Taylor 2017. `fill` is the value written
    (0 is the mean of standardized data)."""

    def __init__(self, size: int, p: float = 1.0, fill: float = 0.0):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"Cutout(size): expected a positive int, got {size!r}")
        self.size = int(size)
        self.p = _probability("Cutout(p)", p)
        self.fill = float(fill)

    def __call__(self, x, rng):
        x = _check_batch("Cutout", x)
        n, _, h, w = x.shape
        cy = rng.integers(0, h, size=n)
        cx = rng.integers(0, w, size=n)
        apply = rng.random(n) < self.p
        y0, x0 = cy - self.size // 2, cx - self.size // 2
        rows = np.arange(h)[None, :, None]
        cols = np.arange(w)[None, None, :]
        hole = ((rows >= y0[:, None, None]) & (rows < (y0 + self.size)[:, None, None])
                & (cols >= x0[:, None, None]) & (cols < (x0 + self.size)[:, None, None]) & apply[:, None, None])
        return np.where(hole[:, None], x.dtype.type(self.fill), x)

    def __repr__(self):
        return f"Cutout(size={self.size}, p={self.p}, fill={self.fill})"


class Mixup:
    """x' = lam * x + (1 - lam) * x[perm] with one lam ~ Beta(alpha, alpha) per batch and a
    random pairing perm (Zhang et al. 2018). Returns (x', y_a, y_b, lam) with y_a = y and
    y_b = y[perm]; train with `mixup_loss` (or soft labels from `mixup_targets`)."""

    def __init__(self, alpha: float = 0.2):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)) or alpha <= 0:
            raise ValueError(f"Mixup(alpha): expected a positive number, got {alpha!r}")
        self.alpha = float(alpha)

    def __call__(self, x, y, rng):
        x = np.asarray(x)
        y = np.asarray(y)
        if x.ndim < 2 or not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"Mixup: expected a float batch (N, ...), got shape {x.shape}, dtype {x.dtype}")
        if y.shape[:1] != x.shape[:1]:
            raise ValueError(f"Mixup: expected labels with {x.shape[0]} rows (one per example), got shape {y.shape}")
        lam = float(rng.beta(self.alpha, self.alpha))
        perm = rng.permutation(x.shape[0])
        mixed = (lam * x + (1 - lam) * x[perm]).astype(x.dtype)
        return mixed, y, y[perm], lam

    def __repr__(self):
        return f"Mixup(alpha={self.alpha})"


def mixup_targets(y_a, y_b, lam: float, num_classes: int) -> np.ndarray:
    """Soft labels lam * onehot(y_a) + (1 - lam) * onehot(y_b), shape (N, num_classes)."""
    y_a, y_b = np.asarray(y_a), np.asarray(y_b)
    if y_a.shape != y_b.shape or y_a.ndim != 1:
        raise ValueError(f"mixup_targets: expected two label vectors (N,) of equal shape, got {y_a.shape} and {y_b.shape}")
    eye = np.eye(num_classes)
    return lam * eye[y_a] + (1 - lam) * eye[y_b]


def mixup_loss(loss_fn, logits, y_a, y_b, lam: float):
    """lam * L(logits, y_a) + (1 - lam) * L(logits, y_b) and its gradient, for a loss returning
    (value, dlogits); by linearity this equals cross-entropy against the mixed soft labels."""
    loss_a, d_a = loss_fn(logits, y_a)
    loss_b, d_b = loss_fn(logits, y_b)
    return lam * loss_a + (1 - lam) * loss_b, lam * d_a + (1 - lam) * d_b


def softmax(logits, axis: int = -1):
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def tta_views(x, flips: bool = True, crops: int = 0):
    """The deterministic test-time views of a batch: the image itself, with crops = padding > 0
    also the four copies shifted by `padding` pixels diagonally (the corner crops of the
    zero-padded image, matching RandomCrop(size=input, padding) in training), and with flips
    each of those mirrored (AlexNet's ten views for crops > 0 and flips)."""
    x = _check_batch("tta_views", x)
    if isinstance(crops, bool) or not isinstance(crops, (int, np.integer)) or crops < 0:
        raise ValueError(f"tta_views(crops): expected a padding >= 0 (0 = no shifted views), got {crops!r}")
    _, _, h, w = x.shape
    views = [x]
    if crops:
        p = int(crops)
        padded = _pad(x, p, p, "constant")
        for dy, dx in ((0, 0), (0, 2 * p), (2 * p, 0), (2 * p, 2 * p)):
            views.append(padded[:, :, dy:dy + h, dx:dx + w])
    if flips:
        views += [v[:, :, :, ::-1] for v in views]
    return views


def tta_predict(predict_fn, x, flips: bool = True, crops: int = 0, logits: bool = False):
    """Average class probabilities over the test-time views of `x` (see `tta_views`).
    predict_fn(batch) returns (N, K) probabilities, or logits with logits=True (softmaxed
    before averaging: averaging probabilities, not logits, is the ensemble the views form)."""
    total = None
    views = tta_views(x, flips=flips, crops=crops)
    for v in views:
        out = np.asarray(predict_fn(np.ascontiguousarray(v)), dtype=np.float64)
        if out.ndim != 2 or out.shape[0] != x.shape[0]:
            raise ValueError(f"tta_predict: predict_fn must return (N={x.shape[0]}, K), got shape {out.shape}")
        probs = softmax(out) if logits else out
        total = probs if total is None else total + probs
    return total / len(views)
