import math

import pytest

from fasttrain import schedules as S


def test_values_at_known_steps():
    assert S.Constant(0.1)(1234) == 0.1
    assert S.StepDecay(1.0, 10, 0.5)(9) == 1.0 and S.StepDecay(1.0, 10, 0.5)(10) == 0.5
    assert S.StepDecay(1.0, 10, 0.5)(35) == 0.125
    assert S.Exponential(2.0, 0.9)(3) == pytest.approx(2.0 * 0.729)
    assert S.InverseTime(1.0, 0.5, 10)(20) == pytest.approx(1 / 2)
    c = S.Cosine(1.0, 100, min_lr=0.1)
    assert c(0) == 1.0 and c(50) == pytest.approx(0.55) and c(100) == pytest.approx(0.1) and c(500) == pytest.approx(0.1)
    lin = S.Linear(1.0, 10, end_lr=0.5)
    assert lin(5) == pytest.approx(0.75) and lin(99) == 0.5
    isq = S.InverseSqrt(1.0, warmup_steps=4)
    assert isq(2) == 1.0 and isq(16) == pytest.approx(0.5)


def test_warmup_composes_with_any_schedule():
    base = S.Cosine(1.0, 100)
    w = S.Warmup(base, warmup_steps=10)
    assert w(0) == 0.0
    assert w(5) == pytest.approx(0.5 * base(10))
    assert w(10) == base(10) and w(60) == base(60)
    w2 = S.Warmup(S.Constant(0.4), 4, start_factor=0.5)
    assert [w2(i) for i in range(5)] == pytest.approx([0.2, 0.25, 0.3, 0.35, 0.4])


def test_cosine_restarts_reset_at_period_boundaries():
    s = S.CosineRestarts(1.0, period=10, mult=2, min_lr=0.0)
    assert s(0) == 1.0 and s(10) == 1.0 and s(30) == 1.0  # cycles of 10, 20, 40
    assert s(9) < 0.05 and s(29) < 0.01
    assert s.cycle(25) == (1, 15, 20)
    assert s(5) == pytest.approx(0.5)


@pytest.mark.parametrize("sched", [S.StepDecay(1, 3), S.Exponential(1, 0.9), S.InverseTime(1), S.Cosine(1, 50),
                                   S.Linear(1, 50), S.InverseSqrt(1, 5)])
def test_decaying_schedules_are_monotonic(sched):
    values = [sched(t) for t in range(80)]
    assert all(b <= a + 1e-15 for a, b in zip(values, values[1:]))


def test_from_config_and_errors():
    s = S.from_config({"name": "cosine", "lr": 0.1, "total_steps": 100, "warmup_steps": 10})
    assert isinstance(s, S.Warmup) and s(10) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    with pytest.raises(ValueError, match="expected one of"):
        S.from_config({"name": "magic"})
    with pytest.raises(ValueError, match="cosine"):
        S.from_config({"name": "cosine", "lr": 0.1})
    with pytest.raises(ValueError, match="step"):
        S.Cosine(1.0, 10)(-1)
    with pytest.raises(ValueError, match="total_steps"):
        S.Cosine(1.0, 0)
