import numpy as np
import pytest

import fasttrain as ft
from fasttrain.arena import Parameter, ParamArena


def _normal(shape, rng, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _params():
    return [Parameter((5, 3), _normal, decay=True, name="w1"), Parameter((3,), _normal, decay=False, name="b1"),
            Parameter((2, 7, 1), _normal, decay=True, name="w2"), Parameter((7,), _normal, decay=False, name="b2")]


def test_views_share_the_flat_buffers():
    arena = ParamArena(_params(), seed=0)
    assert arena.size == 15 + 3 + 14 + 7
    for p in arena.params:
        assert np.shares_memory(p.data, arena.data) and np.shares_memory(p.grad, arena.grad)
        assert p.data.shape == p.shape and p.data.dtype == np.float32
    arena.data[:] = np.arange(arena.size)
    # writing through the flat buffer is seen through every view, with no gaps or overlaps
    seen = np.concatenate([p.data.ravel() for p in arena.params])
    np.testing.assert_array_equal(np.sort(seen), np.arange(arena.size))


def test_groups_are_contiguous_decay_first_reverse_forward_order():
    arena = ParamArena(_params(), seed=0)
    assert [p.name for p in arena.params] == ["w2", "w1", "b2", "b1"]
    assert [(g.name, g.start, g.stop) for g in arena.groups] == [("decay", 0, 29), ("no_decay", 29, 39)]
    assert arena.groups[1].hyper["weight_decay"] == 0.0


def test_init_depends_on_seed_not_layout():
    a = ParamArena(_params(), seed=3)
    b = ParamArena(_params(), seed=3)
    c = ParamArena(_params(), seed=4)
    np.testing.assert_array_equal(a.data, b.data)
    assert not np.array_equal(a.data, c.data)
    # the first parameter in forward order gets the first draws of the generator
    expected = np.random.default_rng(3).standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_array_equal(a.named()["w1"].data, expected)


def test_zero_grad_and_state_dict_round_trip():
    a = ParamArena(_params(), seed=0)
    a.grad[:] = 1
    a.zero_grad()
    assert not a.grad.any()
    b = ParamArena(_params(), seed=1)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.data, b.data)
    with pytest.raises(KeyError, match="missing"):
        b.load_state_dict({"w1": np.zeros((5, 3))})
    bad = a.state_dict()
    bad["w1"] = np.zeros((3, 5))
    with pytest.raises(ValueError, match="expected shape"):
        b.load_state_dict(bad)


def test_empty_arena_is_an_error():
    with pytest.raises(ValueError, match="at least one parameter"):
        ParamArena([])


def test_float64_arena_for_gradient_checks():
    a = ParamArena(_params(), seed=0, dtype=np.float64)
    assert a.data.dtype == np.float64 and a.params[0].data.dtype == np.float64
