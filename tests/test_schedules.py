"""Learning-rate schedules: values from the formulas written out here, warmup composition, SGDR
restarts at period boundaries, monotonicity, reprs, from_config and argument errors."""
import math

import numpy as np
import pytest

from fasttrain import schedules as S


def test_values_at_known_steps():
    assert S.Constant(0.1)(0) == 0.1 and S.Constant(0.1)(10 ** 9) == 0.1
    sd = S.StepDecay(1.0, 10, 0.5)
    assert [sd(t) for t in (0, 9, 10, 19, 20, 35)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125]
    assert S.Exponential(2.0, 0.9)(3) == pytest.approx(2.0 * 0.9 * 0.9 * 0.9, rel=1e-15)
    it = S.InverseTime(1.0, decay_rate=0.5, decay_steps=10)
    assert it(0) == 1.0 and it(20) == pytest.approx(1 / (1 + 0.5 * 2)) and it(7) == pytest.approx(1 / 1.35)
    c = S.Cosine(1.0, 100, min_lr=0.1)
    assert c(0) == 1.0 and c(50) == pytest.approx(0.55) and c(100) == pytest.approx(0.1) and c(500) == pytest.approx(0.1)
    assert c(25) == pytest.approx(0.1 + 0.45 * (1 + math.sqrt(0.5)))
    lin = S.Linear(1.0, 10, end_lr=0.5)
    assert lin(0) == 1.0 and lin(5) == pytest.approx(0.75) and lin(10) == 0.5 and lin(99) == 0.5
    isq = S.InverseSqrt(1.0, warmup_steps=4)
    assert [isq(t) for t in (0, 2, 4)] == [1.0, 1.0, 1.0]
    assert isq(16) == pytest.approx(0.5) and isq(100) == pytest.approx(0.2)


def test_schedules_accept_numpy_ints_and_reject_bad_steps():
    c = S.Cosine(1.0, 10)
    assert c(np.int64(5)) == c(5)
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match=r"Cosine\(step\)"):
            c(bad)


@pytest.mark.parametrize("base", [S.Cosine(1.0, 100), S.Constant(0.3), S.StepDecay(0.5, 7, 0.5),
                                  S.Exponential(1.0, 0.97), S.CosineRestarts(1.0, 20, 2)])
def test_warmup_composes_with_any_schedule(base):
    w = S.Warmup(base, warmup_steps=10)
    target = base(10)
    assert w(0) == 0.0
    for t in range(10):
        assert w(t) == pytest.approx(target * t / 10, rel=1e-15, abs=1e-15)
    for t in (10, 11, 60, 99):
        assert w(t) == base(t)
    ramp = [w(t) for t in range(11)]
    assert all(b > a for a, b in zip(ramp, ramp[1:]))  # strictly rising up to the schedule


def test_warmup_start_factor_and_nesting():
    w2 = S.Warmup(S.Constant(0.4), 4, start_factor=0.5)
    assert [w2(i) for i in range(6)] == pytest.approx([0.2, 0.25, 0.3, 0.35, 0.4, 0.4])
    assert S.Warmup(S.Constant(0.4), 0)(0) == 0.4  # no warmup at all
    nested = S.Warmup(S.Warmup(S.Linear(1.0, 100), 20), 5)  # warmups compose with warmups
    assert nested(5) == pytest.approx(0.25 * S.Linear(1.0, 100)(20)) and nested(50) == S.Linear(1.0, 100)(50)


def _sgdr(lr, min_lr, t, length):
    """Loshchilov & Hutter 2017, eq. 5: eta_min + (eta_max - eta_min)/2 (1 + cos(pi T_cur / T_i))."""
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t / length))


@pytest.mark.parametrize("period,mult,starts", [(10, 1, [0, 10, 20, 30, 40]), (10, 2, [0, 10, 30, 70, 150]),
                                                (4, 1.5, [0, 4, 10, 19, 33])])
def test_cosine_restarts_reset_at_period_boundaries(period, mult, starts):
    s = S.CosineRestarts(1.0, period=period, mult=mult, min_lr=0.1)
    for k, (a, b) in enumerate(zip(starts, starts[1:])):
        assert s(a) == 1.0, (k, a)                 # back to lr exactly at a restart
        assert s.cycle(a) == (k, 0, b - a)
        assert s.cycle(b - 1) == (k, b - a - 1, b - a)
        values = [s(t) for t in range(a, b)]
        assert values == pytest.approx([_sgdr(1.0, 0.1, t - a, b - a) for t in range(a, b)], rel=1e-14)
        assert all(y < x for x, y in zip(values, values[1:]))  # strictly decreasing inside a cycle
        assert values[-1] < 0.1 + 0.9 * (1 - math.cos(math.pi / (b - a))) / 2 + 1e-12  # near min_lr at the end
        assert s(b) > values[-1]                   # and jumps back up


def test_cosine_restarts_is_cheap_far_out():
    s = S.CosineRestarts(1.0, period=1)
    assert s.cycle(10 ** 12) == (10 ** 12, 0, 1)  # closed form for mult = 1, no loop over cycles
    assert S.CosineRestarts(1.0, period=1, mult=2).cycle(2 ** 40 - 1) == (40, 0, 2 ** 40)


@pytest.mark.parametrize("sched", [S.StepDecay(1, 3), S.Exponential(1, 0.9), S.InverseTime(1), S.Cosine(1, 50),
                                   S.Linear(1, 50), S.InverseSqrt(1, 5), S.Cosine(1, 50, min_lr=0.2)])
def test_decaying_schedules_are_monotonic_and_positive(sched):
    values = [sched(t) for t in range(120)]
    assert all(b <= a for a, b in zip(values, values[1:])), sched
    assert values[-1] < values[0] and min(values) >= 0


def test_reprs_are_readable_and_rebuild_the_schedule():
    for s in [S.Constant(0.1), S.StepDecay(0.1, 30, 0.1), S.Exponential(0.1, 0.99), S.InverseTime(0.1, 0.5, 100),
              S.Cosine(0.1, 1000, 1e-4), S.Linear(0.1, 1000), S.InverseSqrt(0.1, 400),
              S.Warmup(S.Cosine(0.1, 1000), 100, 0.1), S.CosineRestarts(0.1, 10, 2.0, 0.001)]:
        r = repr(s)
        assert r.startswith(type(s).__name__ + "(") and "lr=0.1" in r
        rebuilt = eval(r, vars(S))
        assert [rebuilt(t) for t in (0, 7, 150, 999)] == [s(t) for t in (0, 7, 150, 999)]
    assert repr(S.Cosine(0.1, 1000, 1e-4)) == "Cosine(lr=0.1, total_steps=1000, min_lr=0.0001)"


def test_from_config_builds_each_schedule():
    cases = [({"name": "constant", "lr": 0.2}, S.Constant(0.2)),
             ({"name": "step", "lr": 0.2, "step_size": 5, "gamma": 0.5}, S.StepDecay(0.2, 5, 0.5)),
             ({"name": "exponential", "lr": 0.2, "gamma": 0.9}, S.Exponential(0.2, 0.9)),
             ({"name": "inverse_time", "lr": 0.2, "decay_rate": 2.0, "decay_steps": 3}, S.InverseTime(0.2, 2.0, 3)),
             ({"name": "cosine", "lr": 0.2, "total_steps": 40}, S.Cosine(0.2, 40)),
             ({"name": "linear", "lr": 0.2, "total_steps": 40, "end_lr": 0.01}, S.Linear(0.2, 40, 0.01)),
             ({"name": "cosine_restarts", "lr": 0.2, "period": 7, "mult": 2}, S.CosineRestarts(0.2, 7, 2))]
    for cfg, want in cases:
        got = S.from_config(cfg)
        assert type(got) is type(want) and [got(t) for t in range(60)] == [want(t) for t in range(60)], cfg
    s = S.from_config({"name": "cosine", "lr": 0.1, "total_steps": 100, "warmup_steps": 10,
                       "warmup_start_factor": 0.1})
    assert isinstance(s, S.Warmup) and s(0) == pytest.approx(0.1 * S.Cosine(0.1, 100)(10))
    assert s(10) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.1)))


def test_from_config_inverse_sqrt_is_the_transformer_schedule():
    """Vaswani et al. 2017: lrate ∝ min(step^-0.5, step * warmup^-1.5), scaled to peak at lr."""
    w = 8
    s = S.from_config({"name": "inverse_sqrt", "lr": 2.0, "warmup_steps": w})
    for t in range(1, 5 * w):
        assert s(t) == pytest.approx(2.0 * min(t ** -0.5, t * w ** -1.5) * math.sqrt(w), rel=1e-14), t
    assert S.from_config({"name": "inverse_sqrt", "lr": 2.0})(9) == pytest.approx(2.0 / 3)


def test_from_config_errors():
    with pytest.raises(ValueError, match="expected one of"):
        S.from_config({"name": "magic"})
    with pytest.raises(ValueError, match="cosine"):
        S.from_config({"name": "cosine", "lr": 0.1})  # total_steps missing
    with pytest.raises(ValueError, match="cosine"):
        S.from_config({"name": "cosine", "lr": 0.1, "total_steps": 5, "typo": 1})
    with pytest.raises(ValueError, match=r"Warmup\(warmup_steps\)"):
        S.from_config({"name": "constant", "lr": 0.1, "warmup_steps": -3})


@pytest.mark.parametrize("make,match", [
    (lambda: S.Cosine(1.0, 0), r"Cosine\(total_steps\)"), (lambda: S.Cosine(1.0, 10.5), r"Cosine\(total_steps\)"),
    (lambda: S.Cosine(-1.0, 10), r"Cosine\(lr\)"), (lambda: S.Cosine(1.0, 10, min_lr=2.0), r"Cosine\(min_lr\)"),
    (lambda: S.StepDecay(1.0, 0), r"StepDecay\(step_size\)"), (lambda: S.StepDecay(1.0, 3, 0.0), "gamma"),
    (lambda: S.Exponential(1.0, 1.5), r"Exponential\(gamma\)"), (lambda: S.Constant(float("nan")), "lr"),
    (lambda: S.InverseTime(1.0, -1.0), "decay_rate"), (lambda: S.Linear(1.0, -5), "total_steps"),
    (lambda: S.InverseSqrt(1.0, 0), "warmup_steps"), (lambda: S.Warmup(0.1, 10), r"Warmup\(schedule\)"),
    (lambda: S.Warmup(S.Constant(1.0), 10, start_factor=1.5), "start_factor"),
    (lambda: S.CosineRestarts(1.0, 10, mult=0.5), r"CosineRestarts\(mult\)"),
    (lambda: S.CosineRestarts(1.0, 0), "period")])
def test_bad_arguments_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()
