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
    assert abs(w.mean()) < 0.01 * std(fi, fo) * 10
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
