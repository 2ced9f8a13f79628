"""An emulated multi-host cluster on one Linux machine, for tests and benchmarks of the
data-parallel layer across hosts (needs root and iproute2).

Each "host" is a network namespace with its own host name (a UTS namespace made per launched
process), joined to the others by a bridge and veth pairs; addresses come from the benchmarking
range 198.18.0.0/15 (RFC 2544), with no uplink and no default route. Each host's link can be
rate-limited with `tc htb` in both directions. `mpiexec` (hydra, beside sys.executable) launches
ranks through its real multi-host path: `-bootstrap ssh -bootstrap-exec WRAPPER`, where WRAPPER
enters the host's namespace instead of ssh-ing. MPI then sees distinct nodes:
`Split_type(COMM_TYPE_SHARED)` groups ranks by host, and ranks on one host share memory.

Two traps, both handled here:
- the mpich wheel's default transport (UCX) moves data between namespaces of one kernel through
  shared memory, so nothing would cross the links: TCP is forced (`UCX_TLS=tcp,self` over the
  namespace's eth0); `link_bytes()` reads what crossed a host's link.
- this kernel has no `netem` (nor `fq`, `etf` or any other qdisc that holds a packet until a
  departure time: only htb, tbf, fifo and the clsact hook are built in), so latency and jitter
  cannot be emulated (a veth round trip is tens of microseconds, far below a real network's).
  Loss can: `loss=` attaches a tc BPF classifier to both ends of each host's link that drops
  each packet with that probability (compiled at start-up from a few lines of LLVM IR with
  `llc`, the BPF backend of LLVM). Packets there are the kernel's send units before
  segmentation (TCP hands the veth up to 64 KB at a time), so a drop loses a burst of segments.

    python -m fasttrain.parallel.cluster run --hosts 2 --ranks-per-host 2 --rate 1gbit -- \\
        python -m mpi4py script.py
    python -m fasttrain.parallel.cluster cleanup     # namespaces left by a killed run

Every run has its own names (a random id), so parallel runs do not collide; teardown runs on
exit, on Ctrl-C, on SIGTERM and on a timeout, and `cleanup` (also run by each new cluster)
removes what a SIGKILLed owner left behind.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_STATE = Path(tempfile.gettempdir()) / "fasttrain-cluster"   # one folder per live cluster: owner pid
_NET = ipaddress.ip_network("198.18.0.0/15")
_TOOLS = ("ip", "tc", "unshare")


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"cluster: `{' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def unavailable() -> str | None:
    """Why an emulated cluster cannot be made here (None when it can): the reason a test skips."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return "network namespaces need root (run the cluster tests as root, e.g. in a CI container)"
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)} (iproute2 and util-linux provide them)"
    name = f"ftprobe{os.getpid()}"
    proc = _sh("ip", "netns", "add", name, check=False)
    if proc.returncode != 0:
        return f"`ip netns add` failed: {proc.stderr.strip()}"
    _sh("ip", "netns", "del", name, check=False)
    return None


def loss_unavailable() -> str | None:
    """Why packet loss cannot be emulated here (None when it can)."""
    if shutil.which("llc") is None:
        return "no `llc` (LLVM's compiler, which builds the BPF loss filter; e.g. apt-get install llvm)"
    if "bpf" not in _sh("llc", "--version", check=False).stdout:
        return "`llc` has no BPF target"
    return None


def _loss_filter(loss: float, path: Path) -> Path:
    """A tc classifier (BPF, direct-action) that drops a packet with probability `loss`: a random
    u32 from the kernel below loss * 2^32 -> TC_ACT_SHOT (2), else TC_ACT_OK (0). Written as LLVM
    IR (no C compiler with a BPF target needed), compiled by llc."""
    why = loss_unavailable()
    if why:
        raise RuntimeError(f"cluster: cannot emulate loss={loss}: {why}")
    threshold = min(int(round(loss * 2 ** 32)), 2 ** 32 - 1)
    ir = path.with_suffix(".ll")
    ir.write_text(f"""target datalayout = "e-m:e-p:64:64-i64:64-i128:128-n32:64-S128"
target triple = "bpf"
@_license = global [4 x i8] c"GPL\00", section "license", align 1
@llvm.used = appending global [2 x ptr] [ptr @_license, ptr @drop], section "llvm.metadata"
define i32 @drop(ptr %skb) section "classifier" {{
  %r = call i64 inttoptr (i64 7 to ptr)()    ; bpf_get_prandom_u32
  %u = and i64 %r, 4294967295
  %lost = icmp ult i64 %u, {threshold}
  %act = select i1 %lost, i32 2, i32 0
  ret i32 %act
}}
""")
    proc = _sh("llc", "-march=bpf", "-filetype=obj", "-o", str(path), str(ir), check=False)
    if proc.returncode != 0:  # LLVM 14 wants typed-pointer IR unless told otherwise
        _sh("llc", "-opaque-pointers", "-march=bpf", "-filetype=obj", "-o", str(path), str(ir))
    return path


def mpiexec_path() -> Path:
    return Path(sys.executable).parent / "mpiexec"


def cleanup_stale() -> list[str]:
    """Remove the namespaces and bridges of clusters whose owner process is gone; returns their ids."""
    removed = []
    if not _STATE.is_dir():
        return removed
    for d in _STATE.iterdir():
        try:
            pid = int((d / "owner").read_text())
            os.kill(pid, 0)
            continue  # owner alive
        except (OSError, ValueError):
            pass
        _teardown(d.name, int((d / "hosts").read_text()) if (d / "hosts").exists() else 0)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d.name)
    return removed


def _ns(run_id: str, h: int) -> str:
    return f"{run_id}-h{h}"


def _teardown(run_id: str, hosts: int) -> None:
    for h in range(hosts):
        ns = _ns(run_id, h)
        pids = _sh("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:  # what our launches left running in the namespace
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        _sh("ip", "netns", "del", ns, check=False)   # takes the veth pair with it
    _sh("ip", "link", "del", f"{run_id}br", check=False)


def _rate_bits(rate: str | float | None) -> int | None:
    """'1gbit', '100mbit', '10g', 1e9 -> bits per second."""
    if rate is None:
        return None
    if isinstance(rate, (int, float)):
        return int(rate)
    text = rate.strip().lower().removesuffix("bit").removesuffix("bps").removesuffix("/s")
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text[-1:], 1)
    try:
        value = float(text[:-1] if scale != 1 else text) * scale
    except ValueError:
        raise ValueError(f"rate: expected e.g. '1gbit', '100mbit' or bits per second, got {rate!r}") from None
    if value <= 0:
        raise ValueError(f"rate: expected a positive rate, got {rate!r}")
    return int(value)


class Cluster:
    """H emulated hosts with ranks_per_host ranks each (an int, or one count per host).

        with Cluster(hosts=2, ranks_per_host=2, rate="1gbit") as c:
            proc = c.run([sys.executable, "-m", "mpi4py", "script.py"], timeout=60)

    Host names are h0, h1, ...; rank r runs on the host hydra places it on (blocks of
    ranks_per_host, in host order)."""

    def __init__(self, hosts: int = 2, ranks_per_host: int | list[int] = 1, rate: str | float | None = None,
                 loss: float | None = None):
        if int(hosts) < 1:
            raise ValueError(f"Cluster(hosts={hosts}): expected at least 1 host")
        self.hosts = int(hosts)
        per = [ranks_per_host] * self.hosts if isinstance(ranks_per_host, int) else list(ranks_per_host)
        if len(per) != self.hosts or any(int(k) < 1 for k in per):
            raise ValueError(f"Cluster(ranks_per_host={ranks_per_host!r}): expected a count >= 1, or one per host "
                             f"({self.hosts} hosts)")
        self.ranks_per_host = [int(k) for k in per]
        self.rate_bits = _rate_bits(rate)
        if loss is not None and not 0 <= float(loss) < 1:
            raise ValueError(f"Cluster(loss={loss!r}): expected a drop probability in [0, 1)")
        self.loss = float(loss) if loss else None
        self.id = f"ft{random.getrandbits(28):07x}"
        self.names = [f"h{h}" for h in range(self.hosts)]
        self.up = False
        self._dir: Path | None = None

    @property
    def size(self) -> int:
        return sum(self.ranks_per_host)

    def host_of(self, rank: int) -> str:
        """The host name rank `rank` runs on (hydra fills hosts in order, ranks_per_host each)."""
        for name, k in zip(self.names, self.ranks_per_host):
            if rank < k:
                return name
            rank -= k
        raise ValueError(f"host_of(rank={rank}): expected a rank below {self.size}")

    def veth(self, h: int) -> str:
        """The root-namespace end of host h's link (the bridge port)."""
        return f"{self.id}v{h}"

    # -- set-up and teardown ---------------------------------------------------------------------
    def _subnet(self) -> ipaddress.IPv4Network:
        used = _sh("ip", "-4", "addr", check=False).stdout
        subnets = list(_NET.subnets(new_prefix=24))
        for net in random.sample(subnets, len(subnets)):
            if f" {net.network_address + 1}/" not in used:
                return net
        raise RuntimeError("cluster: every /24 of 198.18.0.0/15 is in use on this machine")

    def start(self) -> "Cluster":
        reason = unavailable()
        if reason:
            raise RuntimeError(f"cluster: cannot emulate hosts here: {reason}")
        cleanup_stale()
        self._dir = _STATE / self.id
        self._dir.mkdir(parents=True)
        (self._dir / "owner").write_text(str(os.getpid()))
        (self._dir / "hosts").write_text(str(self.hosts))
        t0 = time.perf_counter()
        try:
            self._build()
        except BaseException:
            self.stop()
            raise
        self.setup_s = time.perf_counter() - t0
        self.up = True
        return self

    def _build(self) -> None:
        net = self._subnet()
        self.bridge, self.address = f"{self.id}br", str(net.network_address + 1)
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "addr", "add", f"{self.address}/24", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")
        self.addresses = []
        for h in range(self.hosts):
            ns, veth, addr = _ns(self.id, h), self.veth(h), f"{net.network_address + 10 + h}"
            _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _sh("ip", "link", "set", veth, "master", self.bridge, "up")
            _sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            self.addresses.append(addr)
            if self.rate_bits:  # both directions: the host's sends (eth0) and its receives (bridge port)
                for prefix, dev in ((["ip", "netns", "exec", ns], "eth0"), ([], veth)):
                    _sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1")
                    _sh(*prefix, "tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
                        "rate", str(self.rate_bits), "ceil", str(self.rate_bits))
        if self.loss:  # both directions, as the rate: the host's sends (eth0) and its receives (bridge port)
            obj = _loss_filter(self.loss, self._dir / "loss.o")
            for h in range(self.hosts):
                for prefix, dev in ((["ip", "netns", "exec", _ns(self.id, h)], "eth0"), ([], self.veth(h))):
                    _sh(*prefix, "tc", "qdisc", "add", "dev", dev, "clsact")
                    _sh(*prefix, "tc", "filter", "add", "dev", dev, "egress", "bpf", "da", "obj", str(obj), "sec", "classifier")
        self.wrapper = self._dir / "enter-host"
        # hydra runs WRAPPER [ssh options] HOST COMMAND...: the options are dropped, the host is
        # entered (network namespace, then a UTS namespace named after it) and the command run
        self.wrapper.write_text(
            "#!/bin/sh\n"
            'while [ $# -gt 0 ]; do case "$1" in -*) shift;; *) break;; esac; done\n'
            'host=$1; shift\n'
            f'case "$host" in h[0-9]*) ;; *) echo "enter-host: unknown host $host" >&2; exit 255;; esac\n'
            f'exec ip netns exec "{self.id}-$host" unshare --uts sh -c \'hostname "$0" && exec sh -c "$*"\' "$host" "$@"\n')
        self.wrapper.chmod(0o755)

    def stop(self) -> None:
        _teardown(self.id, self.hosts)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self.up = False

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- use ---------------------------------------------------------------------------------------
    def mpiexec_args(self, n: int | None = None, launcher: list[str] = ()) -> list[str]:
        """`mpiexec ...` up to the program: every host with its rank count, TCP forced on eth0, then
        any further launcher options."""
        hosts = ",".join(f"{name}:{k}" for name, k in zip(self.names, self.ranks_per_host))
        # the emulated hosts share this machine's cores: each rank takes its share of them, as
        # the ranks of one real host do (an OpenMP team per rank over all cores oversubscribes
        # them, and every parallel region then waits for descheduled threads)
        threads = os.environ.get("FASTTRAIN_THREADS") or str(max(1, len(os.sched_getaffinity(0)) // self.size))
        return [str(mpiexec_path()), "-hosts", hosts, "-n", str(self.size if n is None else n),
                "-genv", "FASTTRAIN_THREADS", threads,
                "-bootstrap", "ssh", "-bootstrap-exec", str(self.wrapper), "-iface", self.bridge,
                "-genv", "UCX_TLS", "tcp,self", "-genv", "UCX_NET_DEVICES", "eth0", *launcher]

    def run(self, argv: list[str], timeout: float = 120, env: dict | None = None, n: int | None = None,
            launcher: list[str] = (), **kwargs) -> subprocess.CompletedProcess:
        """Run argv on every rank under mpiexec; on timeout the whole launch is killed and
        subprocess.TimeoutExpired raised (with the output so far)."""
        proc = self.popen(argv, env=env, n=n, launcher=launcher, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def popen(self, argv: list[str], env: dict | None = None, n: int | None = None, launcher: list[str] = (),
              **kwargs) -> subprocess.Popen:
        if not self.up:
            raise RuntimeError("cluster: start() it first (or use it as a context manager)")
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        return subprocess.Popen(self.mpiexec_args(n, launcher) + [str(a) for a in argv], env=env, start_new_session=True,
                                **kwargs)

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL a launch: mpiexec's process group and everything left in the hosts."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        for h in range(self.hosts):
            for pid in _sh("ip", "netns", "pids", _ns(self.id, h), check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass

    def pids(self, h: int) -> list[int]:
        """Processes running in host h (ranks and hydra's proxy)."""
        return [int(p) for p in _sh("ip", "netns", "pids", _ns(self.id, h), check=False).stdout.split()]

    def link_bytes(self, h: int) -> int:
        """Bytes that crossed host h's link so far, both directions."""
        stats = Path("/sys/class/net") / self.veth(h) / "statistics"
        return int((stats / "rx_bytes").read_text()) + int((stats / "tx_bytes").read_text())

    def retransmits(self, h: int) -> int:
        """TCP segments host h has sent again so far (its namespace's RetransSegs counter)."""
        snmp = _sh("ip", "netns", "exec", _ns(self.id, h), "cat", "/proc/net/snmp").stdout.splitlines()
        names, values = [ln.split()[1:] for ln in snmp if ln.startswith("Tcp:")][:2]
        return int(values[names.index("RetransSegs")])

    def cut(self, h: int) -> None:
        """Take host h's link down (its ranks keep running, unreachable)."""
        _sh("ip", "link", "set", self.veth(h), "down")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fasttrain.parallel.cluster", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="make the cluster, run a command on every rank under mpiexec, tear down")
    run.add_argument("--hosts", type=int, default=2)
    run.add_argument("--ranks-per-host", default="1", help="a count, or one per host: 2,1,1")
    run.add_argument("--rate", default=None, help="per-host link rate in both directions, e.g. 1gbit, 100mbit")
    run.add_argument("--loss", type=float, default=None, help="drop probability per packet in each direction, e.g. 0.001")
    run.add_argument("--timeout", type=float, default=600, help="seconds before the launch is killed")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS...")
    sub.add_parser("cleanup", help="remove namespaces and bridges of clusters whose owner died")
    args = parser.parse_args(argv)
    if args.command == "cleanup":
        print(f"removed {len(cleanup_stale())} stale cluster(s)")
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("run: expected a command after --")
    per = [int(k) for k in args.ranks_per_host.split(",")]
    cluster = Cluster(args.hosts, per[0] if len(per) == 1 else per, args.rate, args.loss)

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where the shell ignored it
    with cluster:
        print(f"cluster {cluster.id}: {cluster.hosts} hosts ({args.ranks_per_host} ranks each) on {cluster.bridge}, "
              f"rate {args.rate or 'unlimited'}, loss {args.loss or 0}; set up in {cluster.setup_s:.2f} s", file=sys.stderr)
        proc = cluster.popen(command, stdout=None, stderr=None)
        try:
            return proc.wait(timeout=args.timeout)
        except KeyboardInterrupt:
            print("cluster: interrupted, tearing down", file=sys.stderr)
            return 130
        except subprocess.TimeoutExpired:
            print(f"cluster: timeout after {args.timeout:g} s, killing the launch", file=sys.stderr)
            return 124
        finally:
            cluster.kill(proc)


if __name__ == "__main__":
    sys.exit(main())
