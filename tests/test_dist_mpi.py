"""fasttrain.parallel under a real MPI launcher: each test runs `mpiexec -n K python -m mpi4py script`
(the runner aborts every rank when one raises) with a timeout; rank 0 prints one JSON line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mpi4py")
MPIEXEC = Path(sys.executable).parent / "mpiexec"
SCRIPTS = Path(__file__).parent / "mpi_scripts"
ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(not MPIEXEC.exists(), reason=f"no mpiexec beside {sys.executable}")]


def mpirun(k, script, *args, timeout=240, check=True):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([str(MPIEXEC), "-n", str(k), sys.executable, "-m", "mpi4py", str(SCRIPTS / script), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])
    return proc


@pytest.mark.parametrize("K", [2, 3, 4])
def test_ring_allreduce_matches_float64_sum_and_ranks_identical(K):
    sizes = [0, 1, K - 1, 7, 1000003, 131071]
    out = mpirun(K, "ring_check.py", ",".join(map(str, sizes)), "65536")
    assert out["size"] == K and [c["n"] for c in out["cases"]] == sizes
    assert out["algorithm_256k"] == "shared_memory", out["algorithm_256k"]
    for c in out["cases"]:
        for key in ("sum", "mean", "ring_sum", "ring_mean", "shm_sum", "shm_mean", "hd_sum", "bucketed"):
            assert c[key + "_identical"], (key, c)
            assert c[key + "_relerr"] <= 1e-5, (key, c)
        assert c["mpi_relerr"] <= 1e-5, c
        # integers: every algorithm (forced, or called directly) returns the exact sum on every rank
        exact = {k for k in c if k.startswith("exact_")}
        assert {"exact_auto", "exact_ring", "exact_halving_doubling", "exact_oneshot", "exact_direct",
                "exact_rooted"} <= exact, c
        assert all(c[k] for k in exact), c
        assert c["shm_repeat_ok"], c
        assert c["shm_f64_identical"] and c["shm_f64_relerr"] <= 1e-12, c
        assert c["bucketed_threaded"], "mpi4py initializes MPI_THREAD_MULTIPLE: buckets should run on a thread"
        # compressed 'once' schedule: identical bytes on every rank, error within one codec step
        bounds = {"fp16": 2 ** -11, "bf16": 2 ** -8, "int8": 1 / 127, "int4": 1 / 7, "sign": 1.0, "ef-int8": 1 / 127}
        for codec, bound in bounds.items():
            assert c[codec + "_identical"], (codec, c)
            assert c[codec + "_err"] <= bound * 1.0001, (codec, c)


def test_ring_with_tiny_segments_and_uneven_chunks():
    out = mpirun(3, "ring_check.py", "2,10,4099", "12")  # 3-value segments: many messages per chunk
    for c in out["cases"]:
        assert c["sum_identical"] and c["sum_relerr"] <= 1e-5 and c["int8_identical"], c
        assert c["ring_sum_identical"] and c["ring_sum_relerr"] <= 1e-5, c
        assert c["shm_sum_identical"] and c["shm_sum_relerr"] <= 1e-5, c


def test_local_sgd_h1_equals_synchronous_averaging():
    out = mpirun(3, "local_sgd_check.py")
    assert out["max_diff"] <= 1e-5 * max(1.0, out["scale"]), out
    assert out["stats"] == [1.0] * 5                # mean of ranks 0, 1, 2
    assert out["synced"] == [1, 2, 4, 8, 12]
    assert out["h4_identical_after_sync"]


def test_exception_on_one_rank_aborts_the_job():
    proc = mpirun(2, "fail.py", timeout=60, check=False)
    assert proc.returncode != 0
    assert "deliberate failure on rank 1" in proc.stderr


def test_collectives_bench_quick_writes_records(tmp_path):
    out = tmp_path / "coll.jsonl"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "collectives.py"), "--quick", "--ranks", "2",
                           "--json", str(out)], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["backend"], r["size"]) for r in records} == {(b, s) for b in ("ring", "mpi") for s in (4096, 262144, 4194304)}
    for r in records:
        assert {"suite", "name", "backend", "size", "ranks", "median_s", "min_s", "max_s", "bytes", "pct_of_limit"} <= set(r)
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"] and r["ranks"] == 2
    assert "int8  codec 0.25" in proc.stdout


@pytest.mark.parametrize("K", [2, 3, 4])
def test_ring_from_persistent_requests_equals_the_per_call_ring(K):
    """plain_ring_allreduce over MPI below PERSISTENT_MAX_BYTES runs from persistent requests kept per
    buffer: the per-call ring's bits on float data and the exact sum on integers, every rank identical,
    for sizes below the rank count, odd sizes, pieces of 1 to 15000 values, 'mean', a buffer called again
    with new data, more buffers than plans kept, and waits that poll; the same for direct_allreduce's
    eager form from persistent requests, against its per-call form and the ring."""
    out = mpirun(K, "persistent_check.py")
    assert out["size"] == K and out["checked"] >= 100 and out["checked_direct"] >= 60, out
    assert out["failures"] == [], out["failures"][:5]
    assert out["kept_after_sizes"] == out["kept_after_eviction"] == out["plans_max"], out
    assert out["direct_plans"] >= 1, out
    assert out["polled_ok"] and out["polled_plans"] == 2, out


@pytest.mark.parametrize("K", [2, 3, 4])
def test_ring_hop_schedule_under_mpi(K):
    """'hop' schedule (tests/hop_bounds.py derives the bound: the chain of p encodes, so the
    error may grow linearly with p); odd and prime sizes, n < p; segments of 300 values rounded
    down to whole 256-value codec blocks."""
    sizes = [1, K - 1, 7, 4099, 65537]
    out = mpirun(K, "hop_check.py", ",".join(map(str, sizes)), str(4 * 300), "40")
    assert out["size"] == K and [c["n"] for c in out["cases"]] == sizes
    for c in out["cases"]:
        assert c["none_equal"], c
        for op in ("sum", "mean"):
            for codec in ("fp16", "bf16", "int8", "int4", "sign", "ef-int8", "ef-sign"):
                key = f"{codec}_{op}"
                assert c[key + "_identical"], (key, c)
                assert c[key + "_err"] <= c[key + "_bound"], (key, c)
            assert c[f"fp16_{op}_chain"] and c[f"bf16_{op}_chain"], c
    for codec in ("int8", "sign"):
        ef = out[f"ef_{codec}"]
        errs = ef["errs"]
        # float32 rounding over the steps only (values ~ K x 0.5, 4 roundings per rank and step)
        assert ef["identity_err"] <= ef["steps"] * 4 * K * 2.0 ** -24 * K, ef
        assert max(errs[20:]) <= 2 * max(errs[:20]) + 1e-6, errs


@pytest.mark.parametrize("K", [2, 3])
def test_raw_allreduce_with_mismatched_arguments_raises_on_every_rank(K):
    out = mpirun(K, "raw_mismatch.py", timeout=120)
    for case in ("size", "dtype", "op", "algorithm", "codec", "small_size"):
        got = out[case]
        assert len(got) == K and all(g.startswith("ring_allreduce: the ranks' calls differ") for g in got), (case, got)
        assert len(set(got)) == 1, got  # the same message on every rank
    assert "rank 0: values=1048576; rank 1: values=1048577" in out["size"][0]
    assert "shared_bytes" in out["algorithm"][0] and "op='sum'" in out["op"][0]
    assert out["after"]


@pytest.mark.parametrize("K", [2, 3, 4])
def test_measured_choice_is_one_decision_on_every_rank(K):
    """measured_choice under MPI with injected candidates: ranks whose own times disagree keep the
    one pick the slowest rank's times give; an injected rule that answers differently per rank
    still leaves every rank with rank 0's answer (decided there, broadcast); counted calls measure
    again in step (after 3 calls, then every 4) and the pick follows the changed speeds."""
    out = mpirun(K, "measured_check.py")
    ranks = out["ranks"]
    assert len(ranks) == K and all(x == ranks[0] for x in ranks[1:]), ranks
    x = ranks[0]
    assert x["disagreeing_ranks"] == "oneshot", x
    assert x["injected_decision"] == "direct", x  # rank 0's answer: MEASURED_CANDIDATES[0]
    picks, measured = zip(*x["sequence"])
    # call 1 measures (nothing kept yet), call 3 and then calls 7 and 11 measure again
    assert [i + 1 for i, m in enumerate(measured) if m] == [1, 3, 7, 11], x["sequence"]
    assert list(picks) == ["oneshot"] * 2 + ["rooted"] * 4 + ["direct"] * 5, x["sequence"]
    assert x["uncounted"] == ["direct"] * 5 and x["ran_by_peeks"] == 0, x


def test_mpich_allreduce_algorithm_set_through_mpi_t_equals_set_by_environment():
    """bench/mpich_algorithms.py (the cluster bench's one-job comparison): an algorithm written through
    MPI_T reads back as its name and sums in the same order (the same float32 bits) as a job launched
    with it in the environment, on COMM_WORLD (no choice cached per communicator) and on a duplicate;
    switching back and forth in one job follows each write. At 3 ranks ring, tree and
    recursive_doubling each add in a different order."""
    names = ["ring", "tree", "recursive_doubling"]
    env_digest = {}
    for name in names:
        os.environ["MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM"] = name
        try:
            out = mpirun(3, "mpich_algorithms_check.py")
        finally:
            del os.environ["MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM"]
        assert out["read"] == name, out
        env_digest[name] = out["digest"]
    assert len(set(env_digest.values())) == 3, f"the algorithms should round differently at 3 ranks: {env_digest}"
    order = names + ["ring", "recursive_doubling"]
    out = mpirun(3, "mpich_algorithms_check.py", ",".join(order))
    assert out["names"][:4] == ["auto", "nb", "smp", "recursive_doubling"], out["names"]
    for run in out["runs"]:
        assert run["read"] == run["set"] and run["world"] == run["dup"] == env_digest[run["set"]], (run, env_digest)
    assert "no_such_algorithm" in out["unknown"] and "recursive_doubling" in out["unknown"], out["unknown"]
