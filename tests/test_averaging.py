"""Weight averaging and snapshot ensembles: EMA and Polyak against hand-computed float64
recurrences, swap restoring the training weights bit for bit (also on error), state_dict round
trips, snapshots at SGDR cycle ends, and ensemble predictions against per-snapshot softmaxes."""
import numpy as np
import pytest

from fasttrain import ParamArena, Parameter
from fasttrain.nn import Linear, ReLU, Sequential, Dropout
from fasttrain.schedules import CosineRestarts
from fasttrain.train.averaging import EMA, PolyakAverage
from fasttrain.train.ensemble import SnapshotEnsemble, ensemble_predict, restart_boundaries


def normal_init(shape, rng, dtype):
    return rng.standard_normal(shape).astype(dtype)


def make_arena(dtype=np.float32):
    params = [Parameter((3, 5), normal_init), Parameter((7,), normal_init, decay=False), Parameter((1,), normal_init)]
    for i, p in enumerate(params):
        p.name = f"p{i}"
    return ParamArena(params, seed=0, dtype=dtype)


def trajectory(arena, steps, seed=0):
    """Parameter values a fake optimizer walks through (float64, one row per step)."""
    return np.random.default_rng(seed).standard_normal((steps, arena.size))


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9, 0.999])
def test_ema_equals_the_recurrence(decay):
    arena = make_arena()
    shadow = arena.data.astype(np.float64)
    ema = EMA(arena, decay=decay)
    for row in trajectory(arena, 25):
        arena.data[...] = row
        ema.update()
        shadow = decay * shadow + (1 - decay) * arena.data.astype(np.float64)
    np.testing.assert_allclose(ema.averaged(), shadow, rtol=1e-5, atol=1e-6)
    assert ema.num_updates == 25


def test_ema_bias_correction():
    arena = make_arena(np.float64)
    decay = 0.9
    ema = EMA(arena, decay=decay, bias_correction=True)
    with pytest.raises(RuntimeError, match="before the first update"):
        ema.averaged()
    shadow = np.zeros(arena.size)
    rows = trajectory(arena, 7)
    for t, row in enumerate(rows, start=1):
        arena.data[...] = row
        ema.update()
        shadow = decay * shadow + (1 - decay) * row
        np.testing.assert_allclose(ema.averaged(), shadow / (1 - decay ** t), rtol=1e-12)
    # the corrected average of constant parameters is exactly those parameters
    const = EMA(arena, decay=0.99, bias_correction=True)
    for _ in range(3):
        const.update()
    np.testing.assert_allclose(const.averaged(), arena.data, rtol=1e-12)
    # bias-corrected weights are a weighted mean: weights sum to one
    w = (1 - decay) * decay ** np.arange(len(rows))[::-1] / (1 - decay ** len(rows))
    np.testing.assert_allclose(ema.averaged(), w @ rows, rtol=1e-12)


def test_swap_evaluates_with_the_average_and_restores_exactly():
    arena = make_arena()
    ema = EMA(arena, decay=0.7)
    for row in trajectory(arena, 5):
        arena.data[...] = row
        ema.update()
    before = arena.data.copy()
    view = arena.params[0].data
    with ema.swap():
        np.testing.assert_array_equal(arena.data, ema.averaged())
        np.testing.assert_array_equal(view.reshape(-1), ema.averaged()[arena.slice_of(arena.params[0])])   # views see it
        assert not np.array_equal(arena.data, before)
    np.testing.assert_array_equal(arena.data, before)
    with pytest.raises(KeyError):
        with ema.swap():
            raise KeyError("evaluation failed")
    np.testing.assert_array_equal(arena.data, before)
    assert view.base is not None and np.shares_memory(view, arena.data)


def test_ema_state_dict_resumes_identically():
    arena = make_arena()
    rows = trajectory(arena, 10)
    a = EMA(arena, decay=0.8, bias_correction=True)
    for row in rows[:6]:
        arena.data[...] = row
        a.update()
    b = EMA(arena, decay=0.8, bias_correction=True)
    b.load_state_dict(a.state_dict())
    for row in rows[6:]:
        arena.data[...] = row
        a.update()
        b.update()
    np.testing.assert_array_equal(a.averaged(), b.averaged())
    with pytest.raises(ValueError, match=r"expected shape \(23,\) \(the arena\), got \(4,\)"):
        b.load_state_dict({**a.state_dict(), "shadow": np.zeros(4)})
    with pytest.raises(ValueError, match="bias_correction"):
        EMA(arena).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match=r"EMA\(decay\): expected a float in \[0, 1\), got 1.0"):
        EMA(arena, decay=1.0)


def test_polyak_is_the_mean_from_start_step():
    arena = make_arena(np.float64)
    avg = PolyakAverage(arena, start_step=4)
    rows = trajectory(arena, 11)
    for step, row in enumerate(rows):
        arena.data[...] = row
        if step == 3:
            with pytest.raises(RuntimeError, match="start_step=4"):
                avg.averaged()
        avg.update(step)
    np.testing.assert_allclose(avg.averaged(), rows[4:].mean(axis=0), rtol=1e-12, atol=1e-14)
    assert avg.count == 7
    other = PolyakAverage(arena)
    other.load_state_dict(avg.state_dict())
    np.testing.assert_array_equal(other.averaged(), avg.averaged())
    avg.copy_to()
    np.testing.assert_array_equal(arena.data, other.averaged())


def test_restart_boundaries_are_where_cosine_restarts_restarts():
    for period, mult in ((10, 1.0), (3, 2.0), (5, 1.5), (1, 1.0)):
        bounds = restart_boundaries(period, 5, mult)
        sched = CosineRestarts(0.1, period, mult)
        for b in bounds:
            assert sched.cycle(b)[1] == 0 and sched.cycle(b - 1)[1] == sched.cycle(b - 1)[2] - 1
        restarts = [s for s in range(1, bounds[-1] + 1) if sched.cycle(s)[1] == 0]
        assert restarts == bounds
    assert restart_boundaries(10, 3, 2) == [10, 30, 70]


def test_snapshot_ensemble_collects_at_cycle_ends():
    arena = make_arena()
    bounds = restart_boundaries(4, 4)       # [4, 8, 12, 16]
    snaps = SnapshotEnsemble(arena, max_snapshots=3)
    rows = trajectory(arena, 17).astype(np.float32)
    taken = []
    for step in range(1, 17):               # step = updates done so far
        arena.data[...] = rows[step]
        taken.append(snaps(step, bounds))
        assert not snaps(step, bounds)      # a repeated call at the same step adds nothing
    assert [s for s, t in zip(range(1, 17), taken) if t] == bounds
    assert snaps.steps == [8, 12, 16] and len(snaps) == 3
    for s, step in zip(snaps, snaps.steps):
        np.testing.assert_array_equal(s, rows[step])
    arena.data[...] = 0
    assert snaps.snapshots[-1].any()        # copies, not views of the arena
    restored = SnapshotEnsemble(arena)
    restored.load_state_dict(snaps.state_dict())
    assert restored.steps == snaps.steps and all(np.array_equal(a, b) for a, b in zip(restored, snaps))


def test_ensemble_predict_averages_softmax_over_snapshots():
    model = Sequential(Linear(5, 4), ReLU(), Dropout(0.5, seed=1, layer_id=0), Linear(4, 3))
    arena = ParamArena.for_model(model, seed=0, dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((7, 5))
    named = arena.named()
    snaps = [np.random.default_rng(s).standard_normal(arena.size) for s in range(3)]

    def reference(flat):
        get = lambda name: flat[arena.slice_of(named[name])].reshape(named[name].shape)
        h = np.maximum(x @ get("0.weight").T + get("0.bias"), 0)     # eval: dropout is the identity
        z = h @ get("3.weight").T + get("3.bias")
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    before = arena.data.copy()
    model.train()
    out = ensemble_predict(model, arena, snaps, x)
    np.testing.assert_allclose(out, np.mean([reference(s) for s in snaps], axis=0), atol=1e-13)
    np.testing.assert_array_equal(arena.data, before)
    assert all(m.training for _, m in model.named_modules())    # mode restored
    np.testing.assert_allclose(ensemble_predict(model, arena, snaps, x, batch_size=3), out, atol=1e-15)
    one = ensemble_predict(model, arena, snaps[:1], x)
    np.testing.assert_allclose(one, reference(snaps[0]), atol=1e-13)
    with pytest.raises(ValueError, match=r"snapshots\[1\]\): expected shape"):
        ensemble_predict(model, arena, [snaps[0], snaps[1][:5]], x)
    with pytest.raises(ValueError, match="at least one snapshot"):
        ensemble_predict(model, arena, [], x)
