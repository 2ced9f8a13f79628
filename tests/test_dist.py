"""fasttrain.parallel without an MPI launcher: chunk/segment arithmetic, the ring over threads standing
in for ranks (ThreadWorld), codecs against independent references, error feedback, LocalComm."""
import os
import subprocess
import sys

import numpy as np
import pytest

from fasttrain.parallel import (BucketedAllreduce, ErrorFeedback, LocalComm, LocalSGD, ThreadWorld, chunk_offsets,
                            get_codec, get_comm, ring_allreduce, segment_bounds, wire_bytes)


# ---------------------------------------------------------------- chunk and segment arithmetic

@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 16, 1000, 131071])
@pytest.mark.parametrize("parts", [1, 2, 3, 4, 5, 8])
def test_chunk_offsets_match_array_split(n, parts):
    off = chunk_offsets(n, parts)
    pieces = np.array_split(np.arange(n), parts)
    assert len(off) == parts + 1 and off[0] == 0 and off[-1] == n
    assert [int(b - a) for a, b in zip(off[:-1], off[1:])] == [len(q) for q in pieces]
    for q, a in zip(pieces, off[:-1]):
        if len(q):
            assert q[0] == a


@pytest.mark.parametrize("start,stop,seg", [(0, 0, 4), (3, 4, 4), (5, 21, 4), (5, 22, 4), (0, 10, 1), (7, 9, 100)])
def test_segment_bounds_cover_range(start, stop, seg):
    pieces = segment_bounds(start, stop, seg)
    covered = [i for a, b in pieces for i in range(a, b)]
    assert covered == list(range(start, stop))
    assert all(0 < b - a <= seg for a, b in pieces)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="parts=0"):
        chunk_offsets(5, 0)
    with pytest.raises(ValueError, match="got 0"):
        segment_bounds(0, 5, 0)
    with pytest.raises(ValueError, match="op"):
        ring_allreduce(LocalComm(), np.zeros(3, np.float32), op="max")
    with pytest.raises(ValueError, match=r"1-D.*\(2, 2\)"):
        ring_allreduce(LocalComm(), np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="int32"):
        ring_allreduce(LocalComm(), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="'int3'"):
        get_codec("int3")
    with pytest.raises(ValueError, match="float32 buffer, got float64"):
        ring_allreduce(LocalComm(), np.zeros(3), codec="int8")


def test_wire_bytes():
    n, p = 1 << 20, 4
    plain = wire_bytes(n, p)
    assert plain == 4 * 2 * (p - 1) * n // p          # 2 (p - 1) / p of the buffer, divisible case
    assert wire_bytes(n, 1) == 0
    assert get_codec("int8").ratio(n) <= 0.27
    assert get_codec("int4").ratio(n) <= 0.14
    assert get_codec("sign").ratio(n) <= 0.05
    # once schedule: full-precision reduce-scatter + encoded all-gather
    int8 = wire_bytes(n, p, codec="int8")
    assert int8 < plain and abs(int8 / plain - (1 + get_codec("int8").ratio(n)) / 2) < 1e-3
    # uneven sizes: every rank's count is the sum of the chunks it sends
    for r in range(3):
        sizes = np.diff(chunk_offsets(10, 3))
        assert wire_bytes(10, 3, rank=r) == 4 * (20 - sizes[(r + 1) % 3] - sizes[(r + 2) % 3])


# ---------------------------------------------------------------- ring over threads

def _rank_data(rank, n, dtype=np.float32):
    return np.random.default_rng([rank, n]).uniform(0.5, 1.5, n).astype(dtype)


@pytest.mark.parametrize("K", [2, 3, 4])
@pytest.mark.parametrize("n_kind", ["one", "K-1", "7", "prime"])
@pytest.mark.parametrize("op", ["sum", "mean"])
def test_ring_over_threads_matches_float64_sum(K, n_kind, op):
    n = {"one": 1, "K-1": K - 1, "7": 7, "prime": 131071}[n_kind]
    ref = np.sum([_rank_data(k, n).astype(np.float64) for k in range(K)], axis=0)
    if op == "mean":
        ref /= K

    def body(comm):
        buf = _rank_data(comm.rank, n)
        ring_allreduce(comm, buf, op=op, segment_bytes=40 if n < 1000 else 4096, small_bytes=0, mid_bytes=0)  # many segments
        return buf

    outs = ThreadWorld(K).run(body)
    np.testing.assert_allclose(outs[0], ref, rtol=1e-5)
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_ring_float64_buffers():
    K, n = 3, 1001
    ref = np.sum([_rank_data(k, n, np.float64) for k in range(K)], axis=0)
    outs = ThreadWorld(K).run(lambda c: ring_allreduce(c, _rank_data(c.rank, n, np.float64), segment_bytes=256, small_bytes=0, mid_bytes=0))
    np.testing.assert_allclose(outs[0], ref, rtol=1e-14)


@pytest.mark.parametrize("codec", ["fp16", "bf16", "int8", "int4", "sign"])
def test_compressed_ring_over_threads_identical(codec):
    K, n = 3, 5003
    ref = np.sum([_rank_data(k, n).astype(np.float64) for k in range(K)], axis=0)

    def body(comm):
        buf = _rank_data(comm.rank, n)
        return ring_allreduce(comm, buf, codec=codec, segment_bytes=999, rng=np.random.default_rng(comm.rank))

    outs = ThreadWorld(K).run(body)
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    bound = {"fp16": 2 ** -11, "bf16": 2 ** -8, "int8": 1 / 127, "int4": 1 / 7, "sign": 1.0}[codec]
    assert np.max(np.abs(outs[0] - ref)) <= bound * np.max(np.abs(ref)) * 1.0001


def test_bucketed_over_threads_matches_ring():
    K, n = 3, 10007
    ref = np.sum([_rank_data(k, n).astype(np.float64) for k in range(K)], axis=0) / K

    def body(comm):
        buf = _rank_data(comm.rank, n)
        br = BucketedAllreduce(comm, buf, bucket_bytes=4 * 999, op="mean")
        assert not br.threaded and len(br) == 11
        for i in reversed(range(len(br))):
            br.start(i)
        br.wait()
        return buf

    outs = ThreadWorld(K).run(body)
    np.testing.assert_allclose(outs[0], ref, rtol=1e-5)
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


# ---------------------------------------------------------------- codecs

def _bf16_reference(x):
    """Nearest bfloat16 by exhaustive comparison of the two neighbours (float64), ties to even."""
    with np.errstate(invalid="ignore"):  # the upper neighbour of inf is a NaN pattern; never picked
        return _bf16_nearest(x)


def _bf16_nearest(x):
    u = x.view(np.uint32).astype(np.uint64)
    lo = (u >> 16) << 16
    hi = lo + (1 << 16)
    flo = lo.astype(np.uint32).view(np.float32).astype(np.float64)
    fhi = hi.astype(np.uint32).view(np.float32).astype(np.float64)
    dlo, dhi = np.abs(x - flo), np.abs(fhi - x)
    pick_hi = (dhi < dlo) | ((dhi == dlo) & (((lo >> 16) & 1) == 1))
    return np.where(pick_hi, fhi, flo).astype(np.float32)


def test_bf16_round_to_nearest_even():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(100_000) * 10.0 ** rng.integers(-20, 20, 100_000)).astype(np.float32)
    # exact ties: low 16 bits 0x8000 with an even and an odd kept bit
    ties = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0xBF818000, 0x00008000], np.uint32).view(np.float32)
    x = np.concatenate([x, ties, np.float32([0.0, -0.0, np.inf, -np.inf])])
    got = get_codec("bf16").roundtrip(x)
    assert np.array_equal(got.view(np.uint32), _bf16_reference(x).view(np.uint32))
    assert got[-9] == np.float32(1.0) and got[-8] == np.uint32(0x3F820000).view(np.float32)
    assert np.isnan(get_codec("bf16").roundtrip(np.float32([np.nan]))).all()


def test_fp16_is_numpy_half_rounding():
    x = np.random.default_rng(1).standard_normal(1001).astype(np.float32) * 100
    assert np.array_equal(get_codec("fp16").roundtrip(x), x.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("name,levels", [("int8", 127), ("int4", 7)])
@pytest.mark.parametrize("n", [1, 255, 256, 257, 1031])
def test_int_codecs_error_within_one_step_per_block(name, levels, n):
    codec = get_codec(name)
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32) * np.repeat(10.0 ** rng.integers(-3, 3, n // 256 + 1), 256)[:n]
    x = x.astype(np.float32)
    got = codec.roundtrip(x, rng)
    assert got.shape == x.shape and codec.nbytes(n) == 4 * -(-n // 256) + (n if name == "int8" else (n + 1) // 2)
    for a in range(0, n, 256):
        blk = x[a:a + 256].astype(np.float64)
        step = np.max(np.abs(blk)) / levels
        assert np.max(np.abs(got[a:a + 256] - blk)) <= step * (1 + 1e-5)
    z = np.zeros(n, np.float32)
    assert np.array_equal(codec.roundtrip(z, rng), z)


@pytest.mark.parametrize("name,levels", [("int8", 127), ("int4", 7)])
def test_stochastic_rounding_is_unbiased(name, levels):
    codec = get_codec(name)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(300).astype(np.float32)
    T = 4000
    mean = np.mean([codec.roundtrip(x, rng) for _ in range(T)], axis=0, dtype=np.float64)
    step = np.concatenate([np.full(256, np.abs(x[:256]).max()), np.full(44, np.abs(x[256:]).max())]) / levels
    # per element variance <= step^2 / 4: 6 standard errors of the mean
    assert np.all(np.abs(mean - x) <= 6 * step / (2 * np.sqrt(T)) + 1e-7)
    # and the rounding is not deterministic (round-to-nearest would be biased)
    assert len({codec.roundtrip(x, rng).tobytes() for _ in range(3)}) > 1


def test_sign_codec_keeps_signs_and_block_mean_magnitude():
    x = np.random.default_rng(3).standard_normal(700).astype(np.float32)
    got = get_codec("sign").roundtrip(x)
    assert np.array_equal(got >= 0, x >= 0)
    for a in range(0, 700, 256):
        np.testing.assert_allclose(np.abs(got[a:a + 256]), np.abs(x[a:a + 256]).mean(), rtol=1e-6)
    assert get_codec("sign").nbytes(700) == 4 * 3 + 88


@pytest.mark.parametrize("name", ["sign", "int4"])
def test_error_feedback_keeps_accumulated_error_bounded(name):
    rng = np.random.default_rng(5)
    g = rng.standard_normal(512).astype(np.float32) * np.linspace(0.01, 3, 512).astype(np.float32)
    ef = ErrorFeedback(name, g.size)
    codec = get_codec(name)
    buf = np.empty(codec.nbytes(g.size), np.uint8)
    dec = np.empty_like(g)
    total_ef = np.zeros(g.size)
    total_plain = np.zeros(g.size)
    errs, plain_errs = [], []
    for t in range(1, 401):
        ef.encode(g, buf, rng)
        ef.decode(buf, dec)
        total_ef += dec
        total_plain += codec.roundtrip(g, rng)
        errs.append(np.max(np.abs(total_ef - t * g.astype(np.float64))))
        plain_errs.append(np.max(np.abs(total_plain - t * g.astype(np.float64))))
    # the accumulated error equals the residual, which stays bounded: it does not grow with t
    np.testing.assert_allclose(total_ef - 400 * g.astype(np.float64), -ef.residual, atol=1e-2)
    assert max(errs[200:]) <= 2 * max(errs[:200]) + 1e-6
    if name == "sign":  # without feedback the sign codec's bias accumulates linearly in t
        assert plain_errs[399] > 1.9 * plain_errs[199] and plain_errs[399] > 2 * max(errs)
    state = ef.state_dict()
    ef2 = ErrorFeedback(name, g.size)
    ef2.load_state_dict(state)
    assert np.array_equal(ef2.residual, ef.residual)
    with pytest.raises(ValueError, match="residual shape"):
        ErrorFeedback(name, 3).load_state_dict(state)


# ---------------------------------------------------------------- LocalComm path

def test_local_comm_is_identity():
    comm = LocalComm()
    x = np.arange(5, dtype=np.float32)
    ring_allreduce(comm, x, op="mean", codec="int8")
    assert np.array_equal(x, np.arange(5, dtype=np.float32))
    assert comm.allgather({"a": 1}) == [{"a": 1}] and comm.bcast(3) == 3
    comm.allreduce_mpi(x, op="mean")
    assert np.array_equal(x, np.arange(5, dtype=np.float32))
    br = BucketedAllreduce(comm, x, bucket_bytes=8)
    br.start_all()
    br.wait()
    assert not br.threaded and len(br) == 3
    with pytest.raises(ValueError, match="no peer"):
        comm.isend(x, 1)


def test_local_sgd_schedule_on_local_comm():
    w = np.ones(4, np.float32)
    sgd = LocalSGD(LocalComm(), w, period_H=4, warmup_sync_steps=3)
    assert [s for s in range(1, 14) if sgd.after_step(s)] == [1, 2, 3, 4, 8, 12]
    assert np.array_equal(w, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="period_H=0"):
        LocalSGD(LocalComm(), w, period_H=0)


def test_local_sgd_over_threads_averages_params_and_extras():
    def body(comm):
        w = np.full(6, float(comm.rank), np.float32)
        extra = [np.full((2, 2), 2.0 * comm.rank), np.full(3, -float(comm.rank), np.float32)]
        LocalSGD(comm, w, period_H=1, extra=extra).after_step(1)
        return w, extra

    for w, extra in ThreadWorld(3).run(body):
        assert np.array_equal(w, np.full(6, 1.0, np.float32))
        assert np.allclose(extra[0], 2.0) and extra[0].dtype == np.float64 and np.allclose(extra[1], -1.0)


def test_get_comm_without_launcher_is_local_and_does_not_import_mpi():
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")}
    code = "import sys; from fasttrain.parallel import get_comm; c = get_comm(); print(type(c).__name__, 'mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["LocalComm", "False"]


def test_launched_world_size_rejects_garbage(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "four")
    with pytest.raises(ValueError, match="'four'"):
        get_comm()


# ---------------------------------------------------------------- 'hop' schedule (threads as ranks)

from hop_bounds import data as _hop_data  # noqa: E402
from hop_bounds import encoded_chain, hop_bound, once_bound  # noqa: E402

from fasttrain.parallel.ring import hop_segment  # noqa: E402

HOP_CODECS = ["fp16", "bf16", "int8", "int4", "sign"]


def _hop_run(K, n, codec, op="sum", schedule="hop", seg=1024, make=None):
    def body(comm):
        c = make(n) if make else codec
        return ring_allreduce(comm, _hop_data(comm.rank, n), op=op, codec=c, segment_bytes=seg,
                              rng=np.random.default_rng([comm.rank, 3]), schedule=schedule)
    return ThreadWorld(K).run(body)


@pytest.mark.parametrize("K", [2, 3, 4, 5])
@pytest.mark.parametrize("n", [1, 2, 7, 1031, 5003])
@pytest.mark.parametrize("codec", HOP_CODECS)
def test_hop_ranks_identical_and_within_chain_bound(K, n, codec):
    parts = [_hop_data(k, n) for k in range(K)]
    ref = np.sum(np.asarray(parts, np.float64), axis=0)
    for op in ("sum", "mean"):
        want = ref / K if op == "mean" else ref
        outs = _hop_run(K, n, codec, op)
        assert all(np.array_equal(outs[0].view(np.uint32), o.view(np.uint32)) for o in outs[1:])
        assert np.max(np.abs(outs[0] - want)) <= hop_bound(parts, codec, op), (op, np.max(np.abs(outs[0] - want)))


@pytest.mark.parametrize("K", [2, 3, 4])
@pytest.mark.parametrize("codec", ["fp16", "bf16"])
@pytest.mark.parametrize("op", ["sum", "mean"])
def test_hop_equals_the_encoded_chain_for_deterministic_codecs(K, codec, op):
    """fp16/bf16 round deterministically per value: the ring must give exactly the chain of
    encodes and additions in ring order (and not what 'once' gives)."""
    n = 4099
    parts = [_hop_data(k, n) for k in range(K)]
    want = encoded_chain(parts, codec, op)
    hop = _hop_run(K, n, codec, op, seg=4 * 300)[0]
    once = _hop_run(K, n, codec, op, schedule="once")[0]
    assert np.array_equal(hop, want)
    assert not np.array_equal(once, want)
    # the chain loses more than 'once' (p encodes instead of one), but stays within the bounds
    ref = np.sum(np.asarray(parts, np.float64), axis=0) / (K if op == "mean" else 1)
    assert np.max(np.abs(once - ref)) <= once_bound(parts, codec, op)


class _CountingComm:
    """Wraps a ThreadComm and counts the bytes this rank sends."""

    def __init__(self, inner):
        self.inner, self.rank, self.size, self.sent = inner, inner.rank, inner.size, 0

    def isend(self, buf, dest, tag=0):
        self.sent += buf.nbytes
        return self.inner.isend(buf, dest, tag)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("K", [2, 3, 5])
@pytest.mark.parametrize("n", [1, 4, 7, 1031, 5003])
@pytest.mark.parametrize("codec,schedule", [(None, "once"), (None, "hop"), ("int8", "once"), ("int8", "hop"),
                                            ("int4", "hop"), ("sign", "hop"), ("fp16", "hop")])
def test_wire_bytes_counts_what_each_rank_sends(K, n, codec, schedule):
    seg = 1100  # not a multiple of the codecs' quantum: hop rounds it down to 256 values

    def body(comm):
        cc = _CountingComm(comm)
        ring_allreduce(cc, _hop_data(comm.rank, n), codec=codec, segment_bytes=seg, small_bytes=0, mid_bytes=0,
                       rng=np.random.default_rng(comm.rank), schedule=schedule)
        return cc.sent

    sent = ThreadWorld(K).run(body)
    assert sent == [wire_bytes(n, K, codec=codec, rank=r, schedule=schedule, segment_bytes=seg) for r in range(K)]


def test_hop_wire_bytes_near_the_codec_ratio():
    n, p = 1 << 20, 4
    plain = wire_bytes(n, p)
    for name in HOP_CODECS:
        ratio = get_codec(name).ratio(n)
        once, hop = wire_bytes(n, p, codec=name), wire_bytes(n, p, codec=name, schedule="hop")
        assert hop < once < plain
        assert abs(hop / plain - ratio) < 1e-3, name  # both phases encoded, segments cost no extra bytes
    assert hop_segment(get_codec("int8"), 1100) == 256 and hop_segment(get_codec("int8"), 1 << 19) == 1 << 17
    assert hop_segment(get_codec("fp16"), 100) == 24  # elementwise: whole bytes of 8 values


@pytest.mark.parametrize("op", ["sum", "mean"])
def test_hop_without_codec_is_the_plain_ring(op):
    """No codec, nothing to quantize: schedule='hop' gives the plain ring's bits."""
    for K, n in ((3, 5003), (4, 7), (2, 1)):
        plain = ThreadWorld(K).run(lambda c: ring_allreduce(c, _hop_data(c.rank, n), op=op, small_bytes=0, mid_bytes=0))
        hop = ThreadWorld(K).run(lambda c: ring_allreduce(c, _hop_data(c.rank, n), op=op, small_bytes=0, mid_bytes=0,
                                                           schedule="hop"))
        assert all(np.array_equal(a, b) for a, b in zip(plain, hop))


def test_bad_schedule_names_the_value():
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"schedule: expected one of \('once', 'hop'\), got 'each'"):
        ring_allreduce(LocalComm(), x, codec="int8", schedule="each")
    with pytest.raises(ValueError, match="got 'each'"):
        wire_bytes(10, 2, codec="int8", schedule="each")
    with pytest.raises(ValueError, match="got 'Hop'"):
        BucketedAllreduce(LocalComm(), x, schedule="Hop")


def _ef_accumulate(K, n, codec, steps, bucket_bytes=None, feedback=True):
    """steps all-reduces (sum) of drifting data with an ErrorFeedback per rank, in buckets when
    bucket_bytes is set. Returns per-step max |sum of results - sum of exact|, the final
    accumulated error and the sum over ranks of the final residuals."""
    base = [np.random.default_rng([k, n, 1]).standard_normal(n).astype(np.float32) for k in range(K)]

    def grad(k, t):
        return base[k] + np.float32(0.3) * np.random.default_rng([k, n, t]).standard_normal(n).astype(np.float32)

    def body(comm):
        ef = ErrorFeedback(codec, n) if feedback else get_codec(codec)
        rng = np.random.default_rng([comm.rank, 7])
        outs = []
        for t in range(steps):
            g = grad(comm.rank, t)
            if bucket_bytes:
                br = BucketedAllreduce(comm, g, bucket_bytes=bucket_bytes, op="sum", codec=ef, segment_bytes=1024,
                                       schedule="hop")
                br._rng = rng
                br.start_all()
                br.wait()
            else:
                ring_allreduce(comm, g, codec=ef, rng=rng, segment_bytes=1024, schedule="hop")
            outs.append(g)
        return outs, (ef.residual.copy() if feedback else None)

    res = ThreadWorld(K).run(body)
    assert all(np.array_equal(np.stack(res[0][0]), np.stack(o)) for o, _ in res[1:])
    total = np.zeros(n)
    errs = []
    for t in range(steps):
        total += res[0][0][t] - np.sum([grad(k, t) for k in range(K)], axis=0, dtype=np.float64)
        errs.append(float(np.max(np.abs(total))))
    resid = np.sum([r for _, r in res], axis=0, dtype=np.float64) if feedback else None
    return errs, total, resid


@pytest.mark.parametrize("codec", HOP_CODECS)
@pytest.mark.parametrize("K,buckets", [(2, None), (3, None), (4, None), (3, 4 * 1000)])
def test_hop_error_feedback_accumulated_error_is_minus_the_residuals(codec, K, buckets):
    """With error feedback every encode's loss is sent on the next call, so the sum over steps of
    the all-reduced values differs from the sum of the exact sums by exactly minus the sum of
    every rank's residual (one residual per value per rank: its role in the chain), bounded by
    what the encodes lose, not growing with the steps as independent losses would. In buckets
    the residual offsets must line up for this to hold."""
    n, steps = 3001, 60
    errs, total, resid = _ef_accumulate(K, n, codec, steps, buckets)
    scale = K * 4.0  # |sum of K ranks' values| stays below ~K * 4 (normal, 0.3 drift)
    # float32 rounding of each step's additions and residual updates, accumulated over the steps
    np.testing.assert_allclose(total, -resid, atol=steps * 4 * K * 2.0 ** -24 * scale)
    assert max(errs[steps // 2:]) <= 2 * max(errs[:steps // 2]) + 1e-6, errs


def test_hop_without_feedback_the_error_grows_with_it_it_does_not():
    K, n, steps = 3, 2003, 60
    with_ef, _, _ = _ef_accumulate(K, n, "int4", steps)
    without, _, _ = _ef_accumulate(K, n, "int4", steps, feedback=False)
    assert without[-1] > 4 * max(with_ef)  # unbiased, but the losses add up as a random walk
    # scaled sign is biased: without feedback the error grows linearly in the steps. With it the
    # residual is bounded only through the codec's contraction ||x - C(x)||^2 = ||x||^2 -
    # ||x||_1^2 / block, weak once a few values dominate a block, so it settles slowly (as for
    # a single encode with feedback: a property of the codec, not of the schedule)
    with_ef, _, _ = _ef_accumulate(K, n, "sign", steps)
    without, _, _ = _ef_accumulate(K, n, "sign", steps, feedback=False)
    assert without[-1] > 1.8 * without[steps // 2 - 1]
    assert with_ef[-1] < 0.7 * without[-1]


def test_dist_alias_gives_the_parallel_modules_themselves():
    import fasttrain
    import fasttrain.dist
    import fasttrain.dist.ring
    import fasttrain.parallel
    import fasttrain.parallel.ring

    assert fasttrain.dist is fasttrain.parallel
    assert fasttrain.dist.ring is fasttrain.parallel.ring
    assert fasttrain.dist.ring_allreduce is fasttrain.parallel.ring.ring_allreduce
