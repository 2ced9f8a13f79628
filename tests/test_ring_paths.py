"""The all-reduce paths of fasttrain.parallel.ring over threads standing in for ranks: recursive
doubling (short buffers), halving-doubling (mid sizes), the pipelined ring (forced with
small_bytes=0, mid_bytes=0), and the ones of hosts with one rank each (one-shot, direct reduce-scatter +
all-gather with every peer at once, segmented, and rooted: through rank 0), against the float64
sum, ranks bit-identical, K = 1..6 (powers of two and not); those three return the same bits (so the
measured choice between them never shows in a result), and the measured choice itself."""
import time

import numpy as np
import pytest

from fasttrain.parallel import ThreadWorld, ring_allreduce
from fasttrain.parallel import ring
from fasttrain.parallel.ring import (MEASURED_CANDIDATES, MEASURED_LARGE_CANDIDATES, direct_allreduce,
                                     halving_doubling_allreduce, measured_candidates, measured_choice, oneshot_allreduce,
                                     plain_ring_allreduce, recursive_doubling_allreduce, rooted_allreduce)


def _data(rank, n):
    return np.random.default_rng([rank, n, 9]).standard_normal(n).astype(np.float32)


@pytest.mark.parametrize("K", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("n", [1, 2, 7, 1031])
@pytest.mark.parametrize("path", ["doubling", "halving", "ring", "oneshot", "direct", "rooted", "auto"])
@pytest.mark.parametrize("op", ["sum", "mean"])
def test_paths_match_float64_sum_and_ranks_identical(K, n, path, op):
    ref = np.sum([_data(k, n).astype(np.float64) for k in range(K)], axis=0) / (K if op == "mean" else 1)

    def body(comm):
        buf = _data(comm.rank, n)
        if path == "doubling":
            return recursive_doubling_allreduce(comm, buf, op)
        if path == "halving":
            return halving_doubling_allreduce(comm, buf, op)
        if path == "oneshot":
            return oneshot_allreduce(comm, buf, op)
        if path == "rooted":
            return rooted_allreduce(comm, buf, op)
        if path == "direct":  # 8-byte segments: several per chunk at n = 1031
            return direct_allreduce(comm, buf, op, segment_bytes=8)
        if path == "ring":
            return ring_allreduce(comm, buf, op=op, segment_bytes=64, small_bytes=0, mid_bytes=0)
        return ring_allreduce(comm, buf, op=op, segment_bytes=64, small_bytes=16, mid_bytes=1 << 12)

    outs = ThreadWorld(K).run(body)
    np.testing.assert_allclose(outs[0], ref, rtol=1e-5, atol=1e-5)
    assert all(np.array_equal(outs[0].view(np.uint32), o.view(np.uint32)) for o in outs[1:])


def test_auto_switches_on_size():
    """Above small_bytes the ring runs: its different summation order shows in the low bits."""
    K, n = 3, 4099
    runs = {}
    for small in (0, 1 << 20):
        runs[small] = ThreadWorld(K).run(lambda c: ring_allreduce(c, _data(c.rank, n), small_bytes=small, mid_bytes=0))[0]
    by_doubling = ThreadWorld(K).run(lambda c: recursive_doubling_allreduce(c, _data(c.rank, n)))[0]
    assert np.array_equal(runs[1 << 20], by_doubling)
    np.testing.assert_allclose(runs[0], by_doubling, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("K", [2, 3, 4, 5])
@pytest.mark.parametrize("op", ["sum", "mean"])
@pytest.mark.parametrize("n", [1, 2, 7, 1031])
def test_one_rank_per_host_paths_return_the_same_bits(K, op, n):
    """one-shot and rooted (whole, and in pieces of 1 and 3 values), direct (segments of 1, 2 and 600
    values) add each chunk in the pipelined ring's order: bit for bit the same result as each other and
    as the ring (whole chunks, segments of 2 values, and as measured_choice runs it), the candidates
    `measured_choice` picks among at every size (values of mixed magnitudes, where a different order
    changes the low bits), for one value, fewer values than ranks and odd counts."""

    def data(rank):
        return (_data(rank, n) * np.float32(10.0) ** np.random.default_rng([rank, 5]).integers(-6, 6, n)).astype(np.float32)

    def body(comm):
        outs = [fn(comm, data(comm.rank)) for fn in (
            lambda c, b: oneshot_allreduce(c, b, op), lambda c, b: rooted_allreduce(c, b, op),
            lambda c, b: oneshot_allreduce(c, b, op, piece_bytes=4), lambda c, b: rooted_allreduce(c, b, op, piece_bytes=4),
            lambda c, b: oneshot_allreduce(c, b, op, piece_bytes=12), lambda c, b: rooted_allreduce(c, b, op, piece_bytes=12),
            lambda c, b: direct_allreduce(c, b, op, segment_bytes=4), lambda c, b: direct_allreduce(c, b, op, segment_bytes=8),
            lambda c, b: direct_allreduce(c, b, op, segment_bytes=2400),
            lambda c, b: plain_ring_allreduce(c, b, op), lambda c, b: plain_ring_allreduce(c, b, op, segment_bytes=8),
            lambda c, b: ring._measured_ring(c, b, op))]
        return np.stack(outs)

    got = ThreadWorld(K).run(body)
    for rank_out in got:
        for other in rank_out:
            assert np.array_equal(rank_out[0].view(np.uint32), other.view(np.uint32))
    np.testing.assert_allclose(got[0][0], np.sum([data(k).astype(np.float64) for k in range(K)], axis=0)
                               / (K if op == "mean" else 1), rtol=1e-5, atol=1e-5 * 10.0 ** 6)


def test_measured_choice_agrees_across_ranks_and_is_kept(monkeypatch):
    """Every rank picks the same candidate from the same gathered times, once per size class;
    rigged timings show that the slowest rank's times decide."""
    picks = ThreadWorld(3).run(lambda c: [measured_choice(c, 1 << 16), measured_choice(c, (1 << 17) - 4),
                                          measured_choice(c, 1 << 12)])
    assert all(p == picks[0] for p in picks) and picks[0][0] == picks[0][1] and picks[0][0] in measured_candidates(1 << 16)

    calls = []

    def slow(name, rank_delay):  # 'direct' is fast except on rank 2, where it is the slowest of all
        def fn(comm, x):
            calls.append((comm.rank, name))
            time.sleep(rank_delay(comm.rank))
        return fn

    monkeypatch.setattr(ring, "_MEASURED_FNS", {
        "direct": slow("direct", lambda r: 0.03 if r == 2 else 0.0),
        "oneshot": slow("oneshot", lambda r: 0.01),
        "rooted": slow("rooted", lambda r: 0.02), "ring": slow("ring", lambda r: 0.04)})

    def body(comm):
        first = measured_choice(comm, 5000)
        n = len(calls)
        again = measured_choice(comm, 6000)  # the same size class: kept, nothing runs
        return first, again, n == len(calls), comm._ring_measured_ms

    out = ThreadWorld(3).run(body)
    assert all(o[:3] == ("oneshot", "oneshot", True) for o in out), out
    assert len(calls) == 3 * 4 * (ring.MEASURED_ROUNDS + 1)
    assert out[0][3][13]["direct"] >= 30 and out[0][3][13]["oneshot"] < out[0][3][13]["rooted"], out[0][3]


@pytest.mark.parametrize("K", [2, 3, 4, 5])
@pytest.mark.parametrize("op", ["sum", "mean"])
@pytest.mark.parametrize("n", [1, 2, 7, 1031])
def test_direct_in_ring_order_returns_the_ring_bits(K, op, n):
    """direct_allreduce with order='ring' (its default from MEASURED_MAX_BYTES on, where it is measured
    against the ring) adds each chunk as the pipelined ring's chain does: bit for bit the ring's result
    on values of mixed magnitudes, whatever the segments; in rank order the bits differ."""

    def data(rank):
        return (_data(rank, n) * np.float32(10.0) ** np.random.default_rng([rank, 7]).integers(-6, 6, n)).astype(np.float32)

    def body(comm):
        return np.stack([plain_ring_allreduce(comm, data(comm.rank), op, segment_bytes=8),
                         plain_ring_allreduce(comm, data(comm.rank), op),
                         direct_allreduce(comm, data(comm.rank), op, segment_bytes=4, order="ring"),
                         direct_allreduce(comm, data(comm.rank), op, segment_bytes=2400, order="ring"),
                         ring._measured_ring(comm, data(comm.rank), op, segment_bytes=12),
                         direct_allreduce(comm, data(comm.rank), op, segment_bytes=8, order="rank")])

    got = ThreadWorld(K).run(body)
    ref = np.sum([data(k).astype(np.float64) for k in range(K)], axis=0) / (K if op == "mean" else 1)
    for rank_out in got:
        assert all(np.array_equal(rank_out[0].view(np.uint32), o.view(np.uint32)) for o in rank_out[1:5])
        assert all(np.array_equal(got[0][0].view(np.uint32), o.view(np.uint32)) for o in rank_out[:5])
        np.testing.assert_allclose(rank_out[5], ref, rtol=1e-5, atol=1e-5 * 10.0 ** 6)
    if K >= 3 and n == 1031:  # rank order differs somewhere: the test above can fail
        assert not np.array_equal(got[0][0], got[0][5])
    with pytest.raises(ValueError, match="order"):
        ThreadWorld(2).run(lambda c: direct_allreduce(c, np.ones(4, np.float32), order="tree"))


def test_onefence_needs_two_hosts_of_equal_rank_counts():
    """The one-fence all-reduce runs only where the ranks span two hosts with several ranks each (tested
    under MPI on the emulated cluster, tests/test_cluster.py); threads are one host: a clear error."""
    with pytest.raises(ValueError, match="two hosts with the same number"):
        ThreadWorld(2).run(lambda c: ring.onefence_allreduce(c, np.ones(4, np.float32)))
    assert ThreadWorld(2).run(lambda c: ring.onefence_fits(c, 1 << 16)) == [False, False]


def test_measured_choice_below_a_megabyte_weighs_the_few_round_pick_against_the_ring(monkeypatch):
    """Below MEASURED_MAX_BYTES the fastest of direct, one-shot and rooted (the kept pick as incumbent)
    meets the ring as from 1 MB (`large_pick`): the ring when faster by the margin or in a tie at the
    wire (the probe in the same rounds), the other one otherwise; a probe under WIRE_PROBE_MIN_BYTES
    (the ring's chunk of 64 KB over 3 ranks: 21.8 KB) says nothing of the wire, so a tie there keeps
    the few-round pick."""
    names = measured_candidates(1 << 16)
    assert names == ("direct", "oneshot", "rooted", "ring")
    calls = []

    def rigged(name, seconds):
        def fn(comm, x):
            calls.append(name)
            time.sleep(seconds[name])
        return fn

    # 64 KB over 3 ranks: floor = 4/3 of 64 KB at the probe's time per byte; the probe moves the
    # ring's 21.8 KB chunk both ways, so a probe taking t makes a floor of about 2 t (as at 256 KB, whose
    # 87 KB probe the tie-breaker believes)
    for nbytes, seconds, want in (
            (1 << 16, {"direct": 0.02, "oneshot": 0.03, "rooted": 0.03, "ring": 0.0, "wire": 0.0}, "ring"),
            (1 << 16, {"direct": 0.0, "oneshot": 0.03, "rooted": 0.03, "ring": 0.03, "wire": 0.03}, "direct"),
            (1 << 18, {"direct": 0.03, "oneshot": 0.02, "rooted": 0.03, "ring": 0.0202, "wire": 0.01}, "ring"),
            (1 << 16, {"direct": 0.03, "oneshot": 0.02, "rooted": 0.03, "ring": 0.0202, "wire": 0.01}, "oneshot"),
            (1 << 16, {"direct": 0.03, "oneshot": 0.02, "rooted": 0.03, "ring": 0.0198, "wire": 0.001}, "oneshot")):
        monkeypatch.setattr(ring, "_MEASURED_FNS", {c: rigged(c, seconds) for c in names})
        monkeypatch.setattr(ring, "_wire_probe", lambda comm, x, s=seconds: time.sleep(s["wire"]))
        calls.clear()
        got = ThreadWorld(3).run(lambda c, n=nbytes: (measured_choice(c, n), c._ring_measured_ms[n.bit_length()]))
        assert [g[0] for g in got] == [want] * 3, (seconds, got[0])
        assert sorted(set(calls)) == sorted(names) and len(calls) == 3 * 4 * (ring.MEASURED_ROUNDS + 1)
        assert set(got[0][1]) >= {"direct", "oneshot", "rooted", "ring", "floor"}, got[0][1]


def test_measured_choice_from_a_megabyte_times_direct_against_the_ring(monkeypatch):
    """From MEASURED_MAX_BYTES the candidates are direct and the ring, timed MEASURED_LARGE_ROUNDS
    times each beside a ping-pong of the ring's chunk (the wire floor) and picked with `large_pick`;
    unrigged, the pick is one of the two and the same on every rank."""
    assert measured_candidates(1 << 20) == MEASURED_LARGE_CANDIDATES == ("direct", "ring")
    assert measured_candidates((1 << 20) - 4) == MEASURED_CANDIDATES + ("ring",)
    picks = ThreadWorld(3).run(lambda c: measured_choice(c, 1 << 20))
    assert len(set(picks)) == 1 and picks[0] in MEASURED_LARGE_CANDIDATES
    names = MEASURED_LARGE_CANDIDATES
    calls, probes = [], []

    def rigged(name, seconds):
        def fn(comm, x):
            calls.append(name)
            time.sleep(seconds[name])
        return fn

    def probe(seconds):
        def fn(comm, x):
            probes.append(x.nbytes)
            time.sleep(seconds["wire"])
        return fn

    nbytes = 3 << 20
    # the wire floor of 3 MB over 3 ranks is 4/3 of 3 MB = 4 MB at the link's time per byte; the
    # probe moves the ring's 1 MB chunk there and back, so a probe taking t makes a floor of 2 t
    for seconds, want in (({"direct": 0.03, "ring": 0.0, "wire": 0.0}, "ring"),       # faster by more than the margin
                          ({"direct": 0.0, "ring": 0.03, "wire": 0.03}, "direct"),    # the same, at the wire
                          ({"direct": 0.04, "ring": 0.0405, "wire": 0.018}, "ring"),  # a tie at the wire (floor 36 ms)
                          ({"direct": 0.04, "ring": 0.0395, "wire": 0.004}, "direct")):  # a tie off it (8 ms)
        monkeypatch.setattr(ring, "_MEASURED_FNS", {c: rigged(c, seconds) for c in names})
        monkeypatch.setattr(ring, "_wire_probe", probe(seconds))
        calls.clear()
        probes.clear()

        def body(c):
            pick = measured_choice(c, nbytes)
            return pick, c._ring_measured_ms[nbytes.bit_length()]

        got = ThreadWorld(3).run(body)
        assert [g[0] for g in got] == [want] * 3, (seconds, got[0])
        assert sorted(set(calls)) == ["direct", "ring"] and len(calls) == 3 * 2 * (ring.MEASURED_LARGE_ROUNDS + 1)
        assert set(probes) == {1 << 20} and len(probes) == 3 * (ring.MEASURED_LARGE_ROUNDS + 1)
        assert got[0][1]["floor"] == pytest.approx(2 * seconds["wire"] * 1e3, rel=0.2, abs=1.0), got[0][1]


def test_large_pick_is_the_faster_beyond_the_margin_and_a_tie_goes_by_the_wire_fraction():
    names = MEASURED_LARGE_CANDIDATES
    ms = lambda v: [v * 1e-3] * 3  # noqa: E731
    margin = ring.MEASURED_LARGE_MARGIN
    # beyond the margin: the faster, wherever the floor is
    for floor in (0.0, 9e-3, 20e-3):
        assert ring.large_pick([{"direct": ms(10), "ring": ms(9.2)}], floor, names)[0] == "ring"
        assert ring.large_pick([{"direct": ms(9.2), "ring": ms(10)}], floor, names)[0] == "direct"
    # a tie (either way round): the ring at the wire (floor >= WIRE_BOUND of the faster), else direct
    for d, r in ((10, 9.7), (9.7, 10), (10, 10)):
        t = [{"direct": ms(d), "ring": ms(r)}]
        at_bound = ring.WIRE_BOUND * min(d, r) * 1e-3
        assert ring.large_pick(t, at_bound * 1.01, names)[0] == "ring"
        assert ring.large_pick(t, at_bound * 0.99, names)[0] == "direct"
    pick, scores = ring.large_pick([{"direct": ms(10), "ring": ms(9.7)}, {"direct": ms(12), "ring": ms(9.8)}], 9e-3, names)
    assert pick == "ring" and scores["direct"] == pytest.approx(12e-3) and scores["floor"] == 9e-3  # 12 vs 9.8: not a tie
    assert ring.large_pick([{"direct": ms(10), "ring": ms(9.7)}], 9e-3, names, margin=0.0)[0] == "ring"
    with pytest.raises(ValueError, match="two candidates"):
        ring.large_pick([{"direct": ms(1)}], 0.0, ("direct",))
    with pytest.raises(ValueError, match="wire floor"):
        ring.large_pick([{"direct": ms(1), "ring": ms(1)}], float("nan"), names)
    assert margin < 0.1  # the tie band stays narrow: a wrong tie-break costs at most this


def test_measured_pick_scores_a_low_quantile_of_the_slowest_rank_and_keeps_the_incumbent_within_margin():
    names = ("direct", "oneshot", "rooted")
    ms = lambda *v: [x * 1e-3 for x in v]  # noqa: E731
    # 'oneshot' costs 1 ms when no rank is kept waiting but was descheduled in 6 of 9 rounds (its
    # median, 5 ms, would lose to rooted's steady 2 ms); 'direct' is fast on rank 0 only
    fast = {"direct": ms(*[0.5] * 9), "oneshot": ms(1, 1, 1, 5, 5, 5, 5, 5, 5), "rooted": ms(*[2] * 9)}
    slow = {"direct": ms(*[3] * 9), "oneshot": ms(*[1] * 9), "rooted": ms(*[2] * 9)}
    pick, scores = ring.measured_pick([fast, slow], None, names)
    assert pick == "oneshot" and scores["direct"] == pytest.approx(3e-3) and scores["oneshot"] == pytest.approx(1e-3)
    # within the margin of the incumbent: kept; beyond it: the fastest
    close = {"direct": ms(*[1.0] * 5), "oneshot": ms(*[0.95] * 5), "rooted": ms(*[0.5] * 5)}
    assert ring.measured_pick([close], "oneshot", names)[0] == "rooted"
    assert ring.measured_pick([close], "direct", names, margin=0.6)[0] == "direct"
    assert ring.measured_pick([{**close, "rooted": ms(*[2] * 5)}], None, names)[0] == "direct"  # 5 % < 10 %
    assert ring.measured_pick([{**close, "rooted": ms(*[2] * 5)}], None, names, margin=0.0)[0] == "oneshot"
    with pytest.raises(ValueError, match="at least one round"):
        ring.measured_pick([{c: [] for c in names}], None, names)


@pytest.mark.parametrize("start,stop,most", [(0, 0, 5), (3, 4, 1), (0, 16384, 15360), (7, 1031, 100), (0, 10, 10),
                                             (0, 11, 10), (5, 5 + 3 * 7, 7)])
def test_even_bounds_cover_the_range_in_the_fewest_near_equal_pieces(start, stop, most):
    b = ring.even_bounds(start, stop, most)
    assert len(b) == -(-(stop - start) // most)
    assert all(x[1] == y[0] for x, y in zip(b, b[1:])) and (not b or (b[0][0], b[-1][1]) == (start, stop))
    lengths = [y - x for x, y in b]
    assert all(0 < n <= most for n in lengths) and (not b or max(lengths) - min(lengths) <= 1)
    with pytest.raises(ValueError, match="piece size"):
        ring.even_bounds(0, 4, 0)


def test_layout_plan_counts_every_call_of_a_measured_class(monkeypatch):
    """From a layout's second call ring_allreduce runs its kept plan (`_layout_plan`), which asks
    measured_choice with the call counted: the re-measurement still comes at call MEASURED_AGAIN_AFTER,
    and every call returns the sum. Three 'hosts' of one rank each (host_count patched), so 80 KB is a
    measured size class."""
    monkeypatch.setattr(ring, "host_count", lambda comm: comm.size)
    monkeypatch.setattr(ring, "MEASURED_AGAIN_AFTER", 5)
    measured = []
    real = ring._measure
    monkeypatch.setattr(ring, "_measure", lambda comm, nbytes, key, cache:
                        measured.append(comm.rank) or real(comm, nbytes, key, cache))

    def body(comm):
        sums = []
        for i in range(7):
            buf = np.full(20000, comm.rank + i, np.float32)
            ring.ring_allreduce(comm, buf)
            sums.append(bool(np.all(buf == 3 * i + 3)))
        return sums, len(comm._ring_plans), comm._ring_measured_calls

    out = ThreadWorld(3).run(body)
    assert all(all(s) for s, _, _ in out), out
    assert all(plans == 1 for _, plans, _ in out), out        # one layout, one plan
    assert sorted(measured) == [0, 0, 1, 1, 2, 2], measured    # call 1 and call 5 (MEASURED_AGAIN_AFTER)
