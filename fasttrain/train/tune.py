"""Hyperparameter search (cs231n notes, "Hyperparameter optimization"): random search rather than
a grid (Bergstra & Bengio, JMLR 2012), learning rate and weight decay sampled uniformly in log
space, a coarse stage of few epochs, then a fine stage in ranges narrowed around the best coarse
trials (more epochs).

Trials run in parallel worker processes started with the 'spawn' method: after any OpenMP use
in the parent, a forked child can hang in the C++ kernels or abort in Numba (docs:
/work/shared/PLATFORM.md). Each worker runs single-threaded (FASTTRAIN_THREADS=1,
OMP_NUM_THREADS=1, NUMBA_NUM_THREADS=1 set before the child imports anything), so W workers use
W cores instead of fighting over them.

Results: a table sorted by validation accuracy (printed, results.csv, results.json) and a scatter
plot of lr vs weight decay coloured by validation accuracy on log axes (tune.png)."""
from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import time

import numpy as np

from ..settings import get_logger

log = get_logger(__name__)

_CHILD_ENV = {"FASTTRAIN_THREADS": "1", "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
              "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _check_range(name: str, r) -> tuple[float, float]:
    lo, hi = (float(v) for v in r)
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"tune({name}): expected (lo, hi) with 0 < lo <= hi, got {tuple(r)!r}")
    return lo, hi


def sample_log_uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    """n values with log10 uniform in [log10 lo, log10 hi]."""
    return 10.0 ** rng.uniform(math.log10(lo), math.log10(hi), size=n)


def narrow(values, full: tuple[float, float], margin: float = 0.25) -> tuple[float, float]:
    """A log-space range spanning `values` widened by `margin` decades-fraction of the full
    range's span on each side, clipped to the full range."""
    lo_f, hi_f = math.log10(full[0]), math.log10(full[1])
    logs = np.log10(np.asarray(values, dtype=np.float64))
    pad = margin * (hi_f - lo_f)
    lo, hi = max(lo_f, logs.min() - pad), min(hi_f, logs.max() + pad)
    return 10.0 ** lo, 10.0 ** hi


def run_trial(spec: dict) -> dict:
    """One trial in a worker: train the config `spec['config']` and return its numbers."""
    from ..config import make_config
    from .run import run
    from .trainer import TrainingDiverged

    cfg = make_config(spec["config"])
    t0 = time.perf_counter()
    row = {"stage": spec["stage"], "trial": spec["trial"], "lr": cfg.lr, "weight_decay": cfg.weight_decay,
           "epochs": cfg.epochs}
    try:
        summary = run(cfg, progress=False)
        row.update(val_acc=summary["val_acc"], val_loss=summary["val_loss"], train_acc=summary["train_acc"],
                   status="ok")
    except TrainingDiverged as exc:
        row.update(val_acc=float("nan"), val_loss=float("nan"), train_acc=float("nan"), status="diverged")
        log.info(f"trial {spec['stage']}/{spec['trial']} diverged: {exc}")
    row["wall_s"] = time.perf_counter() - t0
    from .. import settings

    row["threads"] = settings.num_threads
    row["run_dir"] = cfg.run_dir
    return row


def _run_all(specs: list[dict], workers: int) -> list[dict]:
    if workers <= 1 or len(specs) <= 1:
        # in-process (still one thread each: the env was set for the pool only; keep the parent's setting)
        return [run_trial(s) for s in specs]
    saved = {k: os.environ.get(k) for k in _CHILD_ENV}
    os.environ.update(_CHILD_ENV)  # spawned children inherit the environment at start
    try:
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(processes=min(workers, len(specs)))
        try:
            rows = pool.map(run_trial, specs, chunksize=1)
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
        return rows
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _sort_key(row):
    acc = row["val_acc"]
    return -(acc if acc is not None and math.isfinite(acc) else -1.0)


def format_table(rows: list[dict]) -> str:
    head = f"{'rank':>4} {'stage':<6} {'trial':>5} {'lr':>10} {'weight_decay':>12} {'epochs':>6} {'val_acc':>8} " \
           f"{'val_loss':>9} {'status':<8}"
    lines = [head, "-" * len(head)]
    for i, r in enumerate(rows, 1):
        lines.append(f"{i:>4} {r['stage']:<6} {r['trial']:>5} {r['lr']:>10.3e} {r['weight_decay']:>12.3e} "
                     f"{r['epochs']:>6} {r['val_acc']:>8.4f} {r['val_loss']:>9.4f} {r['status']:<8}")
    return "\n".join(lines)


def plot_trials(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    for stage, marker in (("coarse", "o"), ("fine", "^")):
        sel = [r for r in rows if r["stage"] == stage]
        if not sel:
            continue
        acc = np.array([r["val_acc"] if math.isfinite(r["val_acc"]) else 0.0 for r in sel])
        sc = ax.scatter([r["lr"] for r in sel], [r["weight_decay"] for r in sel], c=acc, cmap="viridis",
                        vmin=0.0, vmax=1.0, marker=marker, s=60, edgecolors="k", label=stage)
    fig.colorbar(sc, ax=ax, label="validation accuracy")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("weight decay")
    ax.set_title("random search (circles: coarse, triangles: fine)")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def tune(cfg, coarse_trials: int = 8, fine_trials: int = 4, coarse_epochs: int = 2, fine_epochs: int = 4,
         lr_range=(1e-4, 1e-1), wd_range=(1e-6, 1e-2), workers: int | None = None, out_dir=None,
         top_k: int | None = None, seed: int | None = None, verbose: bool = True) -> dict:
    """Coarse then fine random search for the model and data of Config `cfg`; returns
    {'rows': sorted results, 'best': the best row, 'fine_ranges': ..., 'out_dir': ..., files}."""
    for name, v in (("coarse_trials", coarse_trials), ("coarse_epochs", coarse_epochs), ("fine_epochs", fine_epochs)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"tune({name}): expected a positive int, got {v!r}")
    if isinstance(fine_trials, bool) or not isinstance(fine_trials, int) or fine_trials < 0:
        raise ValueError(f"tune(fine_trials): expected an int >= 0, got {fine_trials!r}")
    lr_range, wd_range = _check_range("lr_range", lr_range), _check_range("wd_range", wd_range)
    workers = int(workers or os.cpu_count() or 1)
    out_dir = os.fspath(out_dir or os.path.join("runs", time.strftime("tune-%Y%m%d-%H%M%S")))
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(cfg.seed if seed is None else seed)
    base = cfg.to_dict()
    # no plots per trial, and no command center (its per-trial warnings would drown the table)
    base.update(plot=False, threads=None, resume=None, monitor_every=0)

    def specs(stage, lrs, wds, epochs):
        out = []
        for i, (lr, wd) in enumerate(zip(lrs, wds)):
            c = dict(base, lr=float(lr), weight_decay=float(wd), epochs=epochs,
                     run_dir=os.path.join(out_dir, f"{stage}-{i:03d}"))
            out.append({"stage": stage, "trial": i, "config": c})
        return out

    t0 = time.perf_counter()
    coarse = _run_all(specs("coarse", sample_log_uniform(rng, *lr_range, coarse_trials),
                            sample_log_uniform(rng, *wd_range, coarse_trials), coarse_epochs), workers)
    coarse.sort(key=_sort_key)
    k = top_k or max(1, math.ceil(coarse_trials / 4))
    best = [r for r in coarse if r["status"] == "ok"][:k] or coarse[:k]
    fine_lr = narrow([r["lr"] for r in best], lr_range)
    fine_wd = narrow([r["weight_decay"] for r in best], wd_range)
    fine = []
    if fine_trials:
        fine = _run_all(specs("fine", sample_log_uniform(rng, *fine_lr, fine_trials),
                              sample_log_uniform(rng, *fine_wd, fine_trials), fine_epochs), workers)
    rows = sorted(coarse + fine, key=_sort_key)
    files = {"csv": os.path.join(out_dir, "results.csv"), "json": os.path.join(out_dir, "results.json"),
             "png": os.path.join(out_dir, "tune.png")}
    with open(files["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    result = {"rows": rows, "best": rows[0], "coarse_ranges": {"lr": lr_range, "weight_decay": wd_range},
              "fine_ranges": {"lr": fine_lr, "weight_decay": fine_wd}, "workers": workers,
              "wall_time_s": time.perf_counter() - t0, "out_dir": out_dir, "files": files}
    with open(files["json"], "w") as f:
        json.dump(result, f, indent=2)
    plot_trials(rows, files["png"])
    if verbose:
        print(format_table(rows))
        print(f"fine ranges (around the best {len(best)} coarse trials): lr {fine_lr[0]:.2e}..{fine_lr[1]:.2e}, "
              f"weight decay {fine_wd[0]:.2e}..{fine_wd[1]:.2e}")
        print(f"best: lr {rows[0]['lr']:.3e}, weight decay {rows[0]['weight_decay']:.3e} -> val acc "
              f"{rows[0]['val_acc']:.4f}; {len(rows)} trials on {workers} workers in {result['wall_time_s']:.1f} s; "
              f"wrote {files['csv']}, {files['json']}, {files['png']}")
    return result
