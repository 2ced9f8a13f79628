"""Augmentation: each transform against a direct restatement of its definition (windows of the
padded image, scalar bilinear interpolation, per-image factors), on odd shapes and batch 1;
seeds make every transform reproducible; mixup's labels and losses; test-time augmentation."""
import math

import numpy as np
import pytest

from fasttrain.data import augment as A
from fasttrain.losses import SoftmaxCrossEntropy


def batch(shape=(5, 3, 7, 6), seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def rng(seed=1):
    return np.random.default_rng(seed)


ALL = [A.RandomHorizontalFlip(0.5), A.RandomCrop((5, 4), padding=2), A.RandomCrop(7, padding=(1, 2), pad_mode="reflect"),
       A.RandomResizedCrop(scale=(0.2, 1.0)), A.RandomResizedCrop(interpolation="nearest", size=(4, 9)),
       A.ColorJitter(0.4, 0.4, 0.4), A.Cutout(3, p=0.7)]


@pytest.mark.parametrize("t", ALL, ids=repr)
def test_transforms_are_reproducible_keep_input_and_differ_across_seeds(t):
    x = batch((9, 3, 7, 6))
    x0 = x.copy()
    a, b, c = t(x, rng(3)), t(x, rng(3)), t(x, rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(x, x0)   # never in place
    assert a.dtype == x.dtype and a.flags.c_contiguous


@pytest.mark.parametrize("t", ALL, ids=repr)
def test_transforms_reject_non_batches(t):
    with pytest.raises(ValueError, match=r"expected a batch \(N, C, H, W\), got shape \(3, 7, 6\)"):
        t(batch((3, 7, 6)), rng())


def test_flip_mirrors_each_image_or_leaves_it():
    x = batch((64, 2, 3, 5))
    np.testing.assert_array_equal(A.RandomHorizontalFlip(1.0)(x, rng()), x[..., ::-1])
    np.testing.assert_array_equal(A.RandomHorizontalFlip(0.0)(x, rng()), x)
    out = A.RandomHorizontalFlip(0.5)(x, rng())
    flipped = np.array([np.array_equal(o, xi[..., ::-1]) for o, xi in zip(out, x)])
    same = np.array([np.array_equal(o, xi) for o, xi in zip(out, x)])
    assert np.all(flipped ^ same)
    assert 16 <= flipped.sum() <= 48   # Binomial(64, 0.5): outside this is ~1e-4 likely
    with pytest.raises(ValueError, match=r"RandomHorizontalFlip\(p\): expected a probability in \[0, 1\], got 1.5"):
        A.RandomHorizontalFlip(1.5)


def windows(padded, th, tw):
    return {(i, j): padded[:, i:i + th, j:j + tw] for i in range(padded.shape[1] - th + 1)
            for j in range(padded.shape[2] - tw + 1)}


@pytest.mark.parametrize("size,padding,mode", [((7, 6), 2, "zero"), ((3, 5), (1, 0), "zero"),
                                               ((7, 6), (2, 3), "reflect"), ((1, 1), 0, "zero")])
def test_random_crop_outputs_windows_of_the_padded_image(size, padding, mode):
    x = batch((300, 3, 7, 6))
    out = A.RandomCrop(size, padding, mode)(x, rng())
    assert out.shape == (300, 3) + size
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    np_mode = {"zero": "constant", "reflect": "reflect"}[mode]
    seen = set()
    for o, xi in zip(out, x):
        padded = np.pad(xi, ((0, 0), (ph, ph), (pw, pw)), mode=np_mode)
        hits = [k for k, w in windows(padded, *size).items() if np.array_equal(w, o)]
        assert hits, "crop is not a window of the padded image"
        seen.update(hits)
    if size == (3, 5) and padding == (1, 0):
        assert len(seen) == 7 * 2   # every offset of the 7x2 grid was drawn in 300 images (P(miss) ~ 1e-8)


def test_random_crop_argument_errors():
    with pytest.raises(ValueError, match="crop larger than the padded input"):
        A.RandomCrop(10, padding=1)(batch((2, 1, 7, 7)), rng())
    with pytest.raises(ValueError, match="reflect padding needs padding < image size"):
        A.RandomCrop(7, padding=3, pad_mode="reflect")(batch((2, 1, 3, 7)), rng())
    with pytest.raises(ValueError, match=r"RandomCrop\(pad_mode\): expected one of"):
        A.RandomCrop(3, pad_mode="wrap")


def bilinear_scalar(img, oh, ow):
    """Half-pixel bilinear resize, one output pixel at a time."""
    c, h, w = img.shape
    out = np.zeros((c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            sy = min(max((i + 0.5) * h / oh - 0.5, 0.0), h - 1)
            sx = min(max((j + 0.5) * w / ow - 0.5, 0.0), w - 1)
            y0, x0 = int(math.floor(sy)), int(math.floor(sx))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            wy, wx = sy - y0, sx - x0
            out[:, i, j] = ((1 - wy) * ((1 - wx) * img[:, y0, x0] + wx * img[:, y0, x1])
                            + wy * ((1 - wx) * img[:, y1, x0] + wx * img[:, y1, x1]))
    return out


@pytest.mark.parametrize("src,dst", [((5, 7), (5, 7)), ((3, 2), (7, 5)), ((9, 6), (4, 4)), ((1, 1), (3, 2)), ((4, 5), (1, 1))])
def test_resize_bilinear_matches_scalar_definition(src, dst):
    img = batch((1, 2) + src, dtype=np.float64)[0]
    np.testing.assert_allclose(A.resize(img, *dst, "bilinear"), bilinear_scalar(img, *dst), rtol=0, atol=1e-12)


def test_resize_nearest_duplicates_pixels_and_identity():
    img = batch((1, 3, 3, 4), dtype=np.float64)[0]
    np.testing.assert_array_equal(A.resize(img, 6, 8, "nearest"), img.repeat(2, axis=1).repeat(2, axis=2))
    np.testing.assert_array_equal(A.resize(img, 3, 4, "nearest"), img)
    with pytest.raises(ValueError, match="resize\\(interpolation\\)"):
        A.resize(img, 2, 2, "bicubic")


@pytest.mark.parametrize("interp", ["bilinear", "nearest"])
def test_random_resized_crop_full_scale_is_identity_and_values_stay_in_range(interp):
    x = batch((4, 3, 6, 6))
    out = A.RandomResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0), interpolation=interp)(x, rng())
    np.testing.assert_allclose(out, x, rtol=0, atol=1e-6)
    out = A.RandomResizedCrop(scale=(0.1, 0.5), interpolation=interp)(x, rng())
    assert out.shape == x.shape
    # interpolation is a convex combination of the image's own pixels
    assert np.all(out.min(axis=(1, 2, 3)) >= x.min(axis=(1, 2, 3)) - 1e-6)
    assert np.all(out.max(axis=(1, 2, 3)) <= x.max(axis=(1, 2, 3)) + 1e-6)


def test_random_resized_crop_nearest_upscales_a_sub_window():
    # nearest, scale tiny: each output value must be one of the input's values in that image
    x = batch((6, 1, 7, 5))
    out = A.RandomResizedCrop(scale=(0.05, 0.3), interpolation="nearest", size=(8, 8))(x, rng())
    assert out.shape == (6, 1, 8, 8)
    for o, xi in zip(out, x):
        assert np.isin(o, xi).all()
    with pytest.raises(ValueError, match=r"RandomResizedCrop\(scale\)"):
        A.RandomResizedCrop(scale=(0.5, 0.2))


LUMA = np.array([0.299, 0.587, 0.114])


def test_color_jitter_brightness_is_a_bounded_per_image_scale():
    x = np.abs(batch((50, 3, 4, 5), dtype=np.float64)) + 0.1
    out = A.ColorJitter(brightness=0.3)(x, rng())
    ratio = out / x
    f = ratio[:, 0, 0, 0]
    np.testing.assert_allclose(ratio, np.broadcast_to(f[:, None, None, None], x.shape), rtol=1e-12)
    assert np.all((f >= 0.7) & (f <= 1.3)) and f.min() < 0.8 and f.max() > 1.2


def test_color_jitter_contrast_and_saturation_blend_towards_luma():
    x = batch((20, 3, 5, 3), dtype=np.float64)
    gray_of = lambda a: np.tensordot(LUMA, a, axes=([0], [1]))   # (N, H, W)
    out = A.ColorJitter(contrast=0.5)(x, rng())
    mean = gray_of(x).mean(axis=(1, 2))[:, None, None, None]
    f = (out - mean) / (x - mean)
    assert np.allclose(f, f[:, :1, :1, :1], rtol=1e-9) and np.all((f >= 0.5) & (f <= 1.5))
    out = A.ColorJitter(saturation=0.5)(x, rng())
    np.testing.assert_allclose(gray_of(out), gray_of(x), atol=1e-12)   # luma per pixel preserved
    g = (out - gray_of(x)[:, None]) / (x - gray_of(x)[:, None])
    assert np.allclose(g, g[:, :1, :1, :1], rtol=1e-8) and np.all((g >= 0.5) & (g <= 1.5))
    gray_img = np.repeat(batch((4, 1, 3, 3), dtype=np.float64), 3, axis=1)
    np.testing.assert_allclose(A.ColorJitter(saturation=0.9)(gray_img, rng()), gray_img, atol=1e-12)


def test_color_jitter_needs_three_channels():
    with pytest.raises(ValueError, match=r"ColorJitter: expected 3-channel images \(N, 3, H, W\), got \(2, 4, 5, 5\)"):
        A.ColorJitter(0.1)(batch((2, 4, 5, 5)), rng())
    with pytest.raises(ValueError, match=r"ColorJitter\(contrast\): expected a non-negative number, got -1"):
        A.ColorJitter(contrast=-1)


def test_pca_noise_fits_pixel_covariance_and_adds_one_colour_shift_per_image():
    r = np.random.default_rng(0)
    mix = np.array([[1.0, 0.5, 0.2], [0.0, 1.0, 0.3], [0.0, 0.0, 0.4]])
    train = np.einsum("dc,nchw->ndhw", mix, r.standard_normal((30, 3, 6, 7)))
    t = A.PCANoise(alpha=0.1).fit(train)
    cov = np.cov(train.transpose(0, 2, 3, 1).reshape(-1, 3), rowvar=False, bias=True)
    np.testing.assert_allclose(t.eigvecs @ np.diag(t.eigvals) @ t.eigvecs.T, cov, atol=1e-12)
    assert np.all(np.diff(t.eigvals) <= 0)
    x = batch((8, 3, 4, 5), dtype=np.float64)
    out = t(x, rng())
    shift = out - x
    np.testing.assert_allclose(shift, np.broadcast_to(shift[:, :, :1, :1], x.shape), atol=1e-12)
    coef = shift[:, :, 0, 0] @ t.eigvecs / t.eigvals     # a_k per image
    assert 0.01 < coef.std() < 0.3
    np.testing.assert_array_equal(A.PCANoise(0.0).fit(train)(x, rng()), x)
    with pytest.raises(RuntimeError, match="call fit"):
        A.PCANoise(0.1)(x, rng())
    with pytest.raises(ValueError, match="expected 3-channel images"):
        t(batch((2, 1, 4, 4)), rng())


def test_cutout_zeroes_one_clipped_square_per_image():
    x = np.abs(batch((30, 2, 9, 7))) + 1.0     # no zeros in the input
    out = A.Cutout(4)(x, rng())
    for o, xi in zip(out, x):
        hole = o == 0
        np.testing.assert_array_equal(hole[0], hole[1])          # same square in every channel
        np.testing.assert_array_equal(o[~hole], xi[~hole])       # the rest untouched
        rows, cols = np.nonzero(hole[0])
        assert 1 <= hole[0].sum() <= 16
        assert hole[0].sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)   # a rectangle
        assert rows.max() - rows.min() < 4 and cols.max() - cols.min() < 4
    assert np.all(A.Cutout(20)(x, rng()) == 0)
    np.testing.assert_array_equal(A.Cutout(3, p=0.0)(x, rng()), x)


def test_mixup_mixes_images_and_labels_with_the_same_lambda():
    x = batch((11, 3, 4, 4), dtype=np.float64)
    y = np.arange(11) * 3 % 11                       # distinct labels reveal the pairing
    xm, ya, yb, lam = A.Mixup(0.4)(x, y, rng())
    np.testing.assert_array_equal(ya, y)
    assert sorted(yb) == sorted(y) and 0 < lam < 1
    partner = np.array([np.nonzero(y == v)[0][0] for v in yb])
    np.testing.assert_allclose(xm, lam * x + (1 - lam) * x[partner], atol=1e-12)
    soft = A.mixup_targets(ya, yb, lam, 11)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0)
    np.testing.assert_allclose(soft[np.arange(11), ya] + soft[np.arange(11), yb] * (ya != yb), 1.0)
    xm2, _, yb2, lam2 = A.Mixup(0.4)(x, y, rng())
    assert lam2 == lam and np.array_equal(yb2, yb) and np.array_equal(xm2, xm)
    with pytest.raises(ValueError, match="expected labels with 11 rows"):
        A.Mixup(0.4)(x, y[:5], rng())
    with pytest.raises(ValueError, match=r"Mixup\(alpha\): expected a positive number, got 0"):
        A.Mixup(0)


def test_mixup_loss_equals_cross_entropy_on_soft_labels():
    r = np.random.default_rng(2)
    logits = r.standard_normal((7, 5))
    ya, yb, lam = r.integers(0, 5, 7), r.integers(0, 5, 7), 0.3
    loss, d = A.mixup_loss(SoftmaxCrossEntropy(), logits, ya, yb, lam)
    soft = A.mixup_targets(ya, yb, lam, 5)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-(soft * logp).sum() / 7, rel=1e-12)
    np.testing.assert_allclose(d, (np.exp(logp) - soft) / 7, atol=1e-14)


def test_compose_applies_in_order_with_one_generator():
    x = batch((6, 3, 5, 5))
    f, g = A.RandomCrop(5, padding=1), A.RandomHorizontalFlip()
    r1, r2 = rng(9), rng(9)
    np.testing.assert_array_equal(A.Compose([f, g])(x, r1), g(f(x, r2), r2))
    with pytest.raises(TypeError, match="expected callables"):
        A.Compose([f, 3])


def test_tta_averages_probabilities_over_views():
    x = batch((4, 2, 5, 6), dtype=np.float64)
    w = np.random.default_rng(5).standard_normal((2 * 5 * 6, 3))
    calls = []

    def logits_fn(v):
        calls.append(v.copy())
        return v.reshape(len(v), -1) @ w

    out = A.tta_predict(logits_fn, x, flips=True, crops=1, logits=True)
    assert len(calls) == 10
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    views = [x] + [padded[:, :, i:i + 5, j:j + 6] for i in (0, 2) for j in (0, 2)]
    views += [v[..., ::-1] for v in views]
    expected = np.mean([A.softmax(v.reshape(4, -1) @ w) for v in views], axis=0)
    np.testing.assert_allclose(out, expected, atol=1e-14)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    # no views beyond the input: TTA is the plain prediction
    probs = lambda v: A.softmax(v.reshape(len(v), -1) @ w)
    np.testing.assert_allclose(A.tta_predict(probs, x, flips=False), probs(x))
    with pytest.raises(ValueError, match=r"predict_fn must return \(N=4, K\)"):
        A.tta_predict(lambda v: np.zeros(4), x)
