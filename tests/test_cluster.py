"""The data-parallel layer across emulated hosts (fasttrain.parallel.cluster: network namespaces,
a bridge, TCP forced): exact all-reduces for every algorithm, training runs that end with one
parameter hash on every rank, and the algorithm picked across hosts. Needs root and iproute2;
skips with the reason elsewhere."""
import json
import os
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mpi4py")
from fasttrain.parallel import cluster as cl  # noqa: E402
from fasttrain.parallel.ring import HIER_MEASURED_MAX_BYTES, measured_candidates  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).parent / "mpi_scripts"
FAST = ["--monitor-every", "0", "--quiet", "--no-plot"]
_why = cl.unavailable() or (None if cl.mpiexec_path().exists() else f"no mpiexec beside {sys.executable}")
pytestmark = [pytest.mark.mpi, pytest.mark.skipif(_why is not None, reason=f"no emulated cluster: {_why}")]
#: (hosts, ranks per host): two ranks sharing each of two hosts, and three single-rank hosts
LAYOUTS = [(2, 2), (3, 1)]


def env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_json(cluster, script, *args, timeout=180):
    proc = cluster.run([sys.executable, "-m", "mpi4py", str(SCRIPTS / script), *args], timeout=timeout, env=env(),
                       cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def across_hosts(cluster, nbytes):
    """The algorithms possible for mid sizes (64 KB .. 32 MB) when ranks span hosts: one rank per
    host: one round to every peer for two hosts; for more, whichever of the size's candidates
    measured fastest on the first call."""
    if max(cluster.ranks_per_host) > 1:
        two = cluster.hosts == 2 and len(set(cluster.ranks_per_host)) == 1 and nbytes < HIER_MEASURED_MAX_BYTES
        return set(measured_candidates(nbytes, hierarchical=True)) if two else {"hierarchical"}
    if cluster.hosts == 2:
        return {"oneshot"}
    return set(measured_candidates(nbytes))


@pytest.fixture(scope="module", params=LAYOUTS, ids=lambda hr: f"{hr[0]}hostsx{hr[1]}")
def cluster(request):
    hosts, per = request.param
    with cl.Cluster(hosts, per) as c:
        yield c


def test_cluster_set_up_and_torn_down():
    with cl.Cluster(2, [2, 1], rate="1gbit") as c:
        assert c.size == 3 and [c.host_of(r) for r in range(3)] == ["h0", "h0", "h1"]
        names = cl._sh("ip", "netns", "list").stdout
        assert f"{c.id}-h0" in names and f"{c.id}-h1" in names
        assert "htb" in cl._sh("tc", "qdisc", "show", "dev", c.veth(0)).stdout
        proc = c.run(["sh", "-c", "echo $(hostname) $(ip -4 -o addr show eth0 | awk '{print $4}')"], timeout=60)
        assert proc.returncode == 0, proc.stderr
        lines = sorted(proc.stdout.split("\n")[:-1])
        assert [ln.split()[0] for ln in lines] == ["h0", "h0", "h1"]
        assert all(ln.split()[1].startswith("198.1") for ln in lines), lines
    names = cl._sh("ip", "netns", "list").stdout
    assert c.id not in names and not Path(f"/sys/class/net/{c.bridge}").exists()


@pytest.mark.skipif(cl.loss_unavailable() is not None, reason=f"no loss emulation: {cl.loss_unavailable()}")
def test_lossy_links_retransmit_and_every_algorithm_stays_exact():
    """1% of the packets dropped in each direction of each link: TCP resends them (so the filter
    drops), and the all-reduces still return the exact sums. (At 5% a run took 4-22 s, and once,
    in CI, over 300 s: a resent packet dropped again doubles TCP's retransmission timeout, and a
    connection's SYN starts at 1 s, so the tail grows fast with the rate; 1% still drops dozens
    of the run's packets.)"""
    with cl.Cluster(2, 1, loss=0.01) as c:
        assert "bpf" in cl._sh("tc", "filter", "show", "dev", c.veth(0), "egress").stdout
        out = run_json(c, "ring_check.py", "4099,300007", "65536", timeout=300)
        assert sum(c.retransmits(h) for h in range(c.hosts)) > 0
    for case in out["cases"]:
        assert all(v for k, v in case.items() if k.startswith("exact_")), case
    with pytest.raises(ValueError, match="loss"):
        cl.Cluster(2, 1, loss=1.5)


def test_rate_parsing():
    assert cl._rate_bits("1gbit") == 10 ** 9 and cl._rate_bits("100mbit") == 10 ** 8 and cl._rate_bits(5e6) == 5 * 10 ** 6
    with pytest.raises(ValueError, match="rate"):
        cl._rate_bits("fast")


def test_every_algorithm_exact_across_hosts_over_tcp(cluster):
    check_every_algorithm(cluster)


def test_hosts_with_different_rank_counts_take_the_leader_hierarchy():
    with cl.Cluster(2, [2, 1]) as c:
        check_every_algorithm(c)


def test_three_ranks_per_host_stream_exact():
    """Two hosts of three ranks: the barrier-free hierarchy and one-sync sum (NodeWindow.stream,
    sum_whole) with three chunks per host, empty ones (1 and 2 values), 3-value pieces, exact."""
    with cl.Cluster(2, 3) as c:
        out = run_json(c, "ring_check.py", "1,2,4099", "12")
    assert out["size"] == 6 and out["hosts"] == 2
    for case in out["cases"]:
        assert case["exact_hierarchical_stream"] and case["exact_hierarchical_slices"], case
        assert case["exact_onefence"] and case["onefence_same_bits"], case
        assert all(v for k, v in case.items() if k.startswith("exact_")), case


def check_every_algorithm(cluster):
    sizes = [0, 1, 3, 4099, 30011, 300007]  # 30011: 120 KB, the measured choice on 3 hosts
    before = [cluster.link_bytes(h) for h in range(cluster.hosts)]
    out = run_json(cluster, "ring_check.py", ",".join(map(str, sizes)), "65536")
    moved = [cluster.link_bytes(h) - b for h, b in enumerate(before)]
    assert out["size"] == cluster.size and out["hosts"] == cluster.hosts
    # every rank's 300007 floats reach the other hosts: over TCP on the veth, not shared memory
    assert min(moved) > 4 * 300007, moved
    for c in out["cases"]:
        for name in ("auto", "recursive_doubling", "ring", "shared_memory", "halving_doubling", "oneshot", "direct",
                     "rooted"):
            assert c["exact_" + name], (name, c)
        shared = max(cluster.ranks_per_host) > 1
        modes = (["slices"] if shared and len(set(cluster.ranks_per_host)) == 1 else []) + (["leader"] if shared else [])
        assert sorted(k for k in c if k.startswith("exact_hierarchical_") and k != "exact_hierarchical_stream") == \
            sorted("exact_hierarchical_" + m for m in modes), c
        assert all(c["exact_hierarchical_" + m] for m in modes), c
        streamed = cluster.hosts == 2 and min(cluster.ranks_per_host) > 1 and len(set(cluster.ranks_per_host)) == 1
        assert ("exact_hierarchical_stream" in c) == streamed and (not streamed or c["exact_hierarchical_stream"]), c
        for key in ("sum", "mean", "ring_sum", "shm_sum", "hd_sum", "bucketed"):
            assert c[key + "_identical"] and c[key + "_relerr"] <= 1e-5, (key, c)
        assert c["shm_repeat_ok"] and c["int8_identical"] and c["int8_err"] <= 1 / 127 * 1.0001, c
        # two hosts of equal rank counts, short buffers: the one-fence alternative, exact and with the
        # hierarchical all-reduce's bits (so the measured pick between them never shows)
        fits = cluster.hosts == 2 and min(cluster.ranks_per_host) > 1 and len(set(cluster.ranks_per_host)) == 1 \
            and 0 < 4 * c["n"] < HIER_MEASURED_MAX_BYTES
        assert ("exact_onefence" in c) == fits, c
        assert not fits or (c["exact_onefence"] and c["onefence_same_bits"]), c
    # across hosts the shared-memory window alone cannot reduce: ranks on other hosts are not in it
    assert out["algorithms"]["262144"] in across_hosts(cluster, 1 << 18)
    assert out["algorithms"]["1024"] == "recursive_doubling"
    assert out["algorithms"]["4194304"] in across_hosts(cluster, 1 << 22)
    assert out["algorithms"]["67108864"] == "ring"  # above the shared window's range and mid_bytes


@pytest.mark.parametrize("flags", [["--compress", "int8"], ["--local-sgd", "4"]], ids=["int8", "local-sgd-4"])
def test_training_across_hosts_ends_identical(cluster, flags, tmp_path):
    out = run_json(cluster, "train_run.py", *FAST, "--epochs", "2", "--limit", "600", "--dist", "ring", *flags,
                   "--run-dir", str(tmp_path))
    assert len(out["hashes"]) == cluster.size and len(set(out["hashes"])) == 1, out["hashes"]
    assert out["hosts"] == cluster.hosts
    expected = across_hosts(cluster, 86 << 10)  # 86 KB of gradients
    if flags[0] == "--compress":  # compressed across hosts only: the ring there, or inside the hierarchy
        expected = {"hierarchical+int8" if "hierarchical" in expected else "ring+int8"}
    assert out["allreduce_algorithm"] in expected, out


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_pipeline_across_hosts_equals_one_process(schedule):
    # stage 0 on h0, stage 1 on h1: activations and their gradients cross the link by MPI
    # point-to-point over TCP, and the parameters are those of one process accumulating over the
    # same micro-batches, bit for bit
    with cl.Cluster(2, 1) as c:
        before = [c.link_bytes(h) for h in range(c.hosts)]
        out = run_json(c, "pipeline_check.py", "2", "4", schedule)
        moved = [c.link_bytes(h) - b for h, b in enumerate(before)]
    assert out["hosts"] == 2 and out["stages"] == 2 and out["replicas"] == 1, out
    assert out["identical_to_accumulation"] and out["max_diff_whole"] <= 1e-6 * out["scale"], out
    # 3 steps x 12 rows x 16 floats forward and back, at least, on each host's link
    assert min(moved) > 2 * 3 * 12 * 16 * 4, moved


def test_bench_pipeline_cluster_mode_runs():
    import subprocess

    proc = subprocess.run([sys.executable, "bench/pipeline.py", "--cluster", "--quick", "--rates", "none,1gbit"],
                          capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted((r["link"], r["how"]) for r in records) == sorted(
        (f"cluster {rate}", how) for rate in ("none", "1gbit") for how in ("data_parallel", "pipeline_m8"))
    assert all(r["examples_per_s"] > 0 for r in records)


# ---- faults: every waiting rank names the missing ones, and the job ends -----------------------

TIMEOUT_S = 4


def fault_run(cluster, fault, where, tmp_path, cut_host=None, launcher=()):
    """Train under the cluster with FAULT at step 4 on WHERE; returns (process, its stderr, seconds
    from the fault to the end of the job)."""
    mark = tmp_path / "mark"
    argv = [sys.executable, str(SCRIPTS / "train_fault.py"), fault, where, "4", *FAST, "--epochs", "50", "--limit", "600",
            "--dist", "ring", "--collective-timeout", str(TIMEOUT_S), "--run-dir", str(tmp_path / "run")]
    proc = cluster.popen(argv, env=dict(env(), FT_FAULT_MARK=str(mark)), cwd=ROOT, launcher=list(launcher))
    try:
        if cut_host is not None:
            t_end = time.monotonic() + 120
            while not mark.exists() and time.monotonic() < t_end and proc.poll() is None:
                time.sleep(0.05)
            cluster.cut(cut_host)
            t_fault = time.time()
        out, err = proc.communicate(timeout=120)
    finally:
        cluster.kill(proc)
    t_end = time.time()
    if cut_host is None:
        t_fault = min(float(line.split()[-1]) for line in err.splitlines() if line.startswith(f"fault {fault} "))
    print(f"fault {fault} on {where}: the job ended {t_end - t_fault:.1f} s after it (timeout {TIMEOUT_S} s)")
    return proc, err, t_end - t_fault


@pytest.fixture(scope="module")
def cluster2x2():
    with cl.Cluster(2, 2) as c:
        yield c


def watchdog_lines(err):
    return [ln for ln in err.splitlines() if "did not reach" in ln]


@pytest.mark.parametrize("fault,where", [("stop", "rank:3"), ("exit0", "rank:1")])
def test_stopped_or_vanished_rank_is_named_by_every_waiting_rank(cluster2x2, fault, where, tmp_path):
    proc, err, elapsed = fault_run(cluster2x2, fault, where, tmp_path)
    assert proc.returncode != 0, err[-3000:]
    assert elapsed <= TIMEOUT_S + 10, (elapsed, err[-3000:])
    r = int(where.split(":")[1])
    lines = watchdog_lines(err)
    assert lines, err[-3000:]
    assert len(lines) == len({ln.split(":")[1] for ln in lines}), lines  # one line per waiting rank
    for ln in lines:
        assert f"rank {r} (host {cluster2x2.host_of(r)};" in ln and f"within {TIMEOUT_S} s" in ln, ln
        assert "all-reduce #" in ln and "(gradients, step 4)" in ln, ln
    assert "Traceback" not in err, err[-3000:]


@pytest.mark.parametrize("launcher", [[], ["-disable-auto-cleanup"]], ids=["hydra-cleanup", "no-cleanup"])
def test_killed_host_ends_the_job(cluster2x2, launcher, tmp_path):
    """hydra ends the job itself as soon as it sees processes killed (naming no rank); with
    -disable-auto-cleanup it leaves that to the watchdog, which names the host's ranks."""
    proc, err, elapsed = fault_run(cluster2x2, "kill", "h1", tmp_path, launcher=launcher)
    assert proc.returncode != 0 and elapsed <= TIMEOUT_S + 10, (elapsed, err[-3000:])
    if launcher:
        lines = watchdog_lines(err)
        assert lines and all("rank 2 (host h1; no answer" in ln and "rank 3 (host h1; no answer" in ln
                             for ln in lines), err[-3000:]
    assert "Traceback" not in err, err[-3000:]


def test_cut_link_ends_the_job_naming_the_unreachable_host(cluster2x2, tmp_path):
    proc, err, elapsed = fault_run(cluster2x2, "mark", "h1", tmp_path, cut_host=1)
    assert proc.returncode != 0 and elapsed <= TIMEOUT_S + 10, (elapsed, err[-3000:])
    lines = watchdog_lines(err)
    assert lines, err[-3000:]
    assert any("(host h1; no answer" in ln for ln in lines), lines


def test_cluster_allreduce_bench_runs_and_reports_load(tmp_path):
    import subprocess

    out = tmp_path / "b.jsonl"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "cluster_allreduce.py"), "--layouts", "3x1",
                           "--rates", "1gbit", "--sizes", "65536", "--rounds", "3", "--floor", "--json", str(out),
                           "--mpich-algorithms", "default,ring"],
                          capture_output=True, text=True, timeout=180, cwd=ROOT, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "load average" in proc.stdout and "| 3x1 | 1gbit | 64 KB |" in proc.stdout, proc.stdout
    assert "wire floor ms" in proc.stdout and "3x1 1gbit: ping-pong one way" in proc.stdout, proc.stdout
    records = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert {r["backend"] for r in records} == {"mpi", "auto", "oneshot", "direct", "rooted", "flat_ring", "pingpong", "mpit"}
    timed = [r for r in records if r["backend"] not in ("pingpong", "mpit")]
    # both MPICH algorithms in the one job, switched through MPI_T, interleaved with ours
    assert next(r for r in records if r["backend"] == "mpit")["available"], records
    mpi = [r for r in timed if r["backend"] == "mpi"]
    assert sorted((r["mpich_algorithm"], r["mpich_set_by"], r["job"]) for r in mpi) == [
        ("default", "mpi_t", 0), ("ring", "mpi_t", 0)], mpi
    assert {r["job"] for r in timed} == {0} and "MPICH ms by algorithm" in proc.stdout, proc.stdout
    # per entry, the median over rounds of its sample over ours of the same round (ours over ours: 1)
    assert all(r["paired_vs_auto"] > 0 for r in timed) and "| paired |" in proc.stdout, proc.stdout
    assert next(r for r in timed if r["backend"] == "auto")["paired_vs_auto"] == 1.0
    assert all(r["rounds"] == 10 * 3 and r["p20_s"] <= r["median_s"] and "load_before" in r for r in timed)
    # (64 KB runs 10x the base rounds: rounds_for)
    # 'auto' is timed after the re-measurement (its steady pick); the job's first pick is kept beside it
    auto = next(r for r in timed if r["backend"] == "auto")
    assert {auto["first_pick"], auto["algorithm"]} <= set(measured_candidates(65536)), auto
    # the link's fit: a 1 Gbit/s shaper passes at most 1 Gbit/s (beta >= 8 ns/B, less a little for noise),
    # TCP through it at least a third of that
    fit = next(r for r in records if r["backend"] == "pingpong")
    assert 7.5e-9 <= fit["beta_s_per_byte"] <= 24e-9, fit


def test_cluster_allreduce_bench_one_job_per_mpich_algorithm(tmp_path):
    """--mpich-per-job (the way where MPI_T cannot switch): each algorithm in its own job, set in the
    environment, ours timed in each; the table says which algorithm and how ours spread over the jobs."""
    import subprocess

    out = tmp_path / "b.jsonl"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "cluster_allreduce.py"), "--layouts", "3x1",
                           "--rates", "1gbit", "--sizes", "65536", "--rounds", "3", "--json", str(out),
                           "--mpich-algorithms", "default,ring", "--mpich-per-job"],
                          capture_output=True, text=True, timeout=180, cwd=ROOT, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(ln) for ln in out.read_text().splitlines()]
    mpi = sorted((r["mpich_algorithm"], r["mpich_set_by"], r["job"]) for r in records if r["backend"] == "mpi")
    assert mpi == [("default", "env", 0), ("ring", "env", 1)], mpi
    assert sorted(r["job"] for r in records if r["backend"] == "auto") == [0, 1]
    assert "ours ms over the jobs" in proc.stdout and "MPICH algorithm (lowest ratio)" in proc.stdout, proc.stdout
