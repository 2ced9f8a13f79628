"""Peak resident memory of training steps, ours and PyTorch's, each in a fresh process.

    python -m bench.memory [--net resnet20] [--batch 128] [--steps 3]

A child process per implementation imports its framework, builds the model, optimizer and batch,
notes its resident peak so far (the libraries and the model), runs `steps` training steps and
reports the peak. The difference is what the steps themselves need (activations kept for backward,
gradients, workspaces); the peak is what a user's machine must hold.

The peak is VmHWM of /proc/self/status (the high-water mark of this process's own address space).
Not getrusage's ru_maxrss: Linux carries it across fork + exec, so a child of the bench process
would report the parent's size when that is larger. Elsewhere ru_maxrss is the fallback.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from .harness import make_record

IMPLEMENTATIONS = ("cpp", "torch", "torch-cl")


def _maxrss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(impl: str, net: str, batch: int, steps: int, threads: int) -> dict:
    """Runs in the fresh process: build, note the resident peak, train `steps` steps, note it again."""
    if impl == "cpp":
        import fasttrain as ft

        from .train import _ours

        ft.set_num_threads(threads)
        step = _ours(net, batch, 1)
    else:
        import torch

        from .train import torch_step

        torch.set_num_threads(threads)
        step, _ = torch_step(torch, net, batch, impl)
    before = _maxrss_mib()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"impl": impl, "rss_before_steps_mib": round(before, 1), "peak_rss_mib": round(_maxrss_mib(), 1),
            "step_s": times}


def run(net: str = "resnet20", batch: int = 128, steps: int = 3, threads: int | None = None, log=print,
        implementations=IMPLEMENTATIONS) -> list:
    from fasttrain import settings

    threads = threads or settings.num_threads
    records = []
    for impl in implementations:
        cmd = [sys.executable, "-m", "bench.memory", "--child", impl, "--net", net, "--batch", str(batch),
               "--steps", str(steps), "--threads", str(threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                              cwd=Path(__file__).resolve().parents[1])
        if proc.returncode != 0:
            log(f"  memory {impl}: failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            continue
        d = json.loads(proc.stdout.strip().splitlines()[-1])
        records.append(make_record("memory", f"{net}_step_peak_rss", impl, (batch, 3, 32, 32), d["step_s"],
                                   peak_rss_mib=d["peak_rss_mib"], rss_before_steps_mib=d["rss_before_steps_mib"],
                                   steps_rss_mib=round(d["peak_rss_mib"] - d["rss_before_steps_mib"], 1)))
        log(f"  memory {net} b{batch} {impl:<9} peak {d['peak_rss_mib']:7.1f} MiB "
            f"(before the steps {d['rss_before_steps_mib']:7.1f} MiB)")
    return records


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", choices=IMPLEMENTATIONS, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.net, args.batch, args.steps, args.threads or 2)))
        return
    for rec in run(args.net, args.batch, args.steps, args.threads):
        print(rec.to_json())


if __name__ == "__main__":
    main()
