import numpy as np
import pytest

from fasttrain import init


@pytest.mark.parametrize("shape,fans", [((30, 20), (20, 30)), ((8, 3, 5, 5), (75, 200)), ((7,), (7, 7))])
def test_fans(shape, fans):
    assert init.fans(shape) == fans


@pytest.mark.parametrize("name,std", [
    ("xavier_uniform", lambda fi, fo: np.sqrt(2.0 / (fi + fo))),
    ("xavier_normal", lambda fi, fo: np.sqrt(2.0 / (fi + fo))),
    ("he_normal", lambda fi, fo: np.sqrt(2.0 / fi)),
    ("he_uniform", lambda fi, fo: np.sqrt(2.0 / fi)),
    ("small_normal", lambda fi, fo: 0.01),
])
def test_std_follows_the_formula(name, std):
    shape = (256, 64, 3, 3)
    w = init.get(name)(shape, np.random.default_rng(0), np.float64)
    fi, fo = init.fans(shape)
    assert w.shape == shape and w.dtype == np.float64
    assert abs(w.mean()) < 0.02 * std(fi, fo)   # the mean's own std is std / 384 here
    assert w.std() == pytest.approx(std(fi, fo), rel=0.02)


def test_orthogonal_rows_and_columns():
    for shape in [(16, 16), (8, 20), (20, 8), (6, 2, 3, 3)]:
        w = init.orthogonal(gain=2.0)(shape, np.random.default_rng(1), np.float64).reshape(shape[0], -1)
        small = min(w.shape)
        gram = w @ w.T if w.shape[0] == small else w.T @ w
        np.testing.assert_allclose(gram, 4.0 * np.eye(small), atol=1e-10)


def test_constants_and_seeding():
    assert not init.zeros()((3, 2), None, np.float32).any()
    assert (init.ones()((3,), None, np.float32) == 1).all()
    a = init.get("he_normal")((5, 4), np.random.default_rng(7), np.float32)
    b = init.get("he_normal")((5, 4), np.random.default_rng(7), np.float32)
    np.testing.assert_array_equal(a, b)


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="expected a callable or one of"):
        init.get("lecun_magic")


@pytest.mark.parametrize("make,std", [
    (lambda: init.xavier_uniform(gain=3.0), lambda fi, fo: 3.0 * np.sqrt(2.0 / (fi + fo))),
    (lambda: init.xavier_normal(gain=0.5), lambda fi, fo: 0.5 * np.sqrt(2.0 / (fi + fo))),
    (lambda: init.he_normal(a=0.2), lambda fi, fo: np.sqrt(2.0 / (1 + 0.04) / fi)),
    (lambda: init.he_uniform(a=1.0), lambda fi, fo: np.sqrt(1.0 / fi)),   # a=1: linear, gain 1
    (lambda: init.small_normal(std=0.5), lambda fi, fo: 0.5),
])
def test_hyperparameters_scale_the_std(make, std):
    shape = (300, 500)   # (out, in): fan_in 500, fan_out 300
    w = make()(shape, np.random.default_rng(2), np.float32)
    assert w.dtype == np.float32 and w.shape == shape
    assert w.std(dtype=np.float64) == pytest.approx(std(500, 300), rel=0.02)


def test_uniform_bounds_are_respected():
    w = init.he_uniform()((64, 10, 3, 3), np.random.default_rng(3), np.float64)
    bound = np.sqrt(6.0 / 90)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound


def test_constant_aliases_and_bad_arguments():
    np.testing.assert_array_equal(init.constant(0.25)((2, 3), None, np.float64), np.full((2, 3), 0.25))
    for a, b in [("glorot_uniform", "xavier_uniform"), ("kaiming_normal", "he_normal")]:
        np.testing.assert_array_equal(init.get(a)((4, 5), np.random.default_rng(0), np.float64),
                                      init.get(b)((4, 5), np.random.default_rng(0), np.float64))
    fn = init.xavier_normal(gain=2.0)
    assert init.get(fn) is fn
    for bad in (None, 3, "He_Normal"):
        with pytest.raises(ValueError, match=r"init: expected a callable or one of \[.*'he_normal'.*\], got"):
            init.get(bad)


def test_orthogonal_is_sign_corrected():
    """Without the sign correction LAPACK's QR makes Q[0, 0] = -|a00| / |a0| < 0 every time; with it
    Q is uniform over the orthogonal group (Mezzadri 2007), so Q[0, 0] averages to 0."""
    rng = np.random.default_rng(4)
    q00 = [init.orthogonal()((3, 3), rng, np.float64)[0, 0] for _ in range(2000)]
    assert abs(np.mean(q00)) < 0.05   # 0.05 is about 4 standard errors of the mean
