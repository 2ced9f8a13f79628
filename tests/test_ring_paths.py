"""The all-reduce paths of fasttrain.parallel.ring over threads standing in for ranks: recursive
doubling (short buffers), halving-doubling (mid sizes), the pipelined ring (forced with
small_bytes=0, mid_bytes=0), and the all-peers-at-once ones of hosts with one rank each (one-shot,
direct reduce-scatter + all-gather, segmented), against the float64
sum, ranks bit-identical, K = 1..6 (powers of two and not)."""
import numpy as np
import pytest

from fasttrain.parallel import ThreadWorld, ring_allreduce
from fasttrain.parallel.ring import (direct_allreduce, halving_doubling_allreduce, oneshot_allreduce,
                                     recursive_doubling_allreduce)


def _data(rank, n):
    return np.random.default_rng([rank, n, 9]).standard_normal(n).astype(np.float32)


@pytest.mark.parametrize("K", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("n", [1, 2, 7, 1031])
@pytest.mark.parametrize("path", ["doubling", "halving", "ring", "oneshot", "direct", "auto"])
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
