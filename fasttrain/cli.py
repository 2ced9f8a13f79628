"""Command line: `fasttrain train [--config FILE] [--epochs N] ...`, `fasttrain check` (sanity
checks), `fasttrain tune` (random search over lr and weight decay), `fasttrain bench` (the
repository's benchmarks) and `fasttrain info`.
Every Config field is a flag (`batch_size` -> `--batch-size`); flags override the TOML file,
which overrides the defaults. The resolved config is saved as config.toml in the run folder."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from .config import Config, field_help, field_types, load_config, make_config, save_config


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    defaults, described = Config(), field_help()
    for name, typ in field_types().items():
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        about = described.get(name, "").replace("%", "%%")  # argparse %-formats help strings
        if typ is bool:
            parser.add_argument(flag, dest=name, default=None, action=argparse.BooleanOptionalAction,
                                help=f"{about} (default: {default})")
        elif typ is list:  # comma-separated on the command line, a TOML array in a config file
            parser.add_argument(flag, dest=name, default=None, metavar="A,B,...",
                                type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
                                help=f"{about}; comma-separated (default: {default})")
        else:
            parser.add_argument(flag, dest=name, default=None, type=typ, metavar=typ.__name__.upper(),
                                help=f"{about} (default: {default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fasttrain", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model (default: a small CNN on the bundled digits)")
    train.add_argument("--config", default=None, help="TOML file of config keys")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_flags(train)
    sub.add_parser("info", help="print build information and available kernel backends")
    check = sub.add_parser("check", help="sanity checks: initial loss ~ ln(C), overfit 20 examples, gradient check")
    check.add_argument("--config", default=None, help="TOML file of config keys")
    check.add_argument("--overfit-steps", type=int, default=300, help="step budget of the overfit check (default: 300)")
    _add_config_flags(check)
    tune = sub.add_parser("tune", help="random search in log space over lr and weight decay (coarse, then fine)")
    tune.add_argument("--config", default=None, help="TOML file of config keys")
    tune.add_argument("--coarse-trials", type=int, default=8)
    tune.add_argument("--fine-trials", type=int, default=4)
    tune.add_argument("--coarse-epochs", type=int, default=2)
    tune.add_argument("--fine-epochs", type=int, default=4)
    tune.add_argument("--lr-range", type=float, nargs=2, default=(1e-4, 1e-1), metavar=("LO", "HI"))
    tune.add_argument("--wd-range", type=float, nargs=2, default=(1e-6, 1e-2), metavar=("LO", "HI"))
    tune.add_argument("--workers", type=int, default=None, help="parallel trial processes (default: CPU count)")
    tune.add_argument("--out", default=None, help="output folder (default: runs/tune-<timestamp>)")
    _add_config_flags(tune)
    sub.add_parser("bench", help="run the repository's benchmarks (bench.run; arguments are forwarded)",
                   add_help=False)
    return parser


def resolve_config(args: argparse.Namespace) -> Config:
    base = load_config(args.config) if args.config else Config()
    flags = {k: getattr(args, k) for k in field_types() if getattr(args, k) is not None}
    cfg = make_config(flags, base)
    from .parallel.data_parallel import check_config  # no MPI import: option combinations only

    check_config(cfg)
    return cfg


def make_schedule(cfg: Config, total_steps: int):
    """step -> lr from fasttrain.schedules: constant or cosine decay to 0 over the run (Loshchilov &
    Hutter, "SGDR", 2017, without restarts), after a linear warmup of cfg.warmup_steps."""
    from . import schedules

    if cfg.schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule: expected 'constant' or 'cosine', got {cfg.schedule!r}")
    spec = {"name": cfg.schedule, "lr": cfg.lr, "warmup_steps": cfg.warmup_steps}
    if cfg.schedule == "cosine":
        spec["total_steps"] = max(total_steps, 1)
    return schedules.from_config(spec)


def make_optimizer(name: str, arena, lr: float, weight_decay: float):
    from . import optim

    classes = {k.lower(): getattr(optim, k) for k in dir(optim) if isinstance(getattr(optim, k), type)}
    cls = classes.get(name.lower())
    if cls is None:
        raise ValueError(f"optimizer: expected one of {sorted(classes)}, got {name!r}")
    return cls(arena, lr=lr, weight_decay=weight_decay)


def train(cfg: Config, progress: bool | None = None) -> dict:
    """Run the training a config describes; returns a summary dict (also saved as summary.json)."""
    t_start = time.perf_counter()
    import fasttrain as ft
    from .data import ChannelStandardizer, DataLoader, load_dataset
    from .losses import SoftmaxCrossEntropy
    from .models import build
    from .train import Trainer

    if cfg.threads is not None:
        ft.set_num_threads(cfg.threads)
    if cfg.backend is not None:
        ft.set_backend(cfg.backend)
    from .device import array_module

    xp = array_module(cfg.device)  # raises with the reason when the GPU cannot be used
    if cfg.device == "cuda" and cfg.dist != "none":
        raise ValueError(f"device='cuda' with dist={cfg.dist!r}: the data-parallel layer reduces host arrays; "
                         "expected dist='none' on the GPU")
    # -- data parallel (issue 8): one code path for 1 rank (LocalComm) and K ranks under mpirun --
    from .parallel.data_parallel import DataParallel, ShardedLoader, scaled_lr, world_comm

    comm = world_comm(cfg.dist)
    rank0 = comm.rank == 0   # progress, metrics, plots, checkpoints and validation: rank 0 only
    run_dir = cfg.run_dir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    if comm.size > 1:
        run_dir = comm.bcast(run_dir, root=0)  # one timestamp for every rank
    if rank0:
        os.makedirs(run_dir, exist_ok=True)
        save_config(cfg, os.path.join(run_dir, "config.toml"))

    data = load_dataset(cfg.dataset, cfg.data_path, cfg.val_fraction, cfg.seed).limit(cfg.limit)
    norm = ChannelStandardizer().fit(data.x_train)  # statistics of the training split only
    x_train, x_val = norm(data.x_train), norm(data.x_val)
    train_loader = DataLoader(x_train, data.y_train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    val_loader = DataLoader(x_val, data.y_val, 256, shuffle=False)
    run_cfg = cfg  # dist (issue 8): the run's lr and warmup after linear scaling
    if cfg.dist != "none":
        train_loader = ShardedLoader(train_loader, comm.rank, comm.size)
        lr, warmup = scaled_lr(cfg.lr, comm.size, cfg.warmup_steps, len(train_loader), cfg.lr_scaling)
        run_cfg = dataclasses.replace(cfg, lr=lr, warmup_steps=warmup)
        val_loader = val_loader if rank0 else None

    # dropout masks differ per rank (a rank's own stream); parameters come from rank 0's broadcast
    model = build(cfg.model, data.input_shape, data.num_classes, cfg.dropout, seed=cfg.seed + 7919 * comm.rank)
    arena = ft.ParamArena.for_model(model, seed=cfg.seed, xp=xp)
    if cfg.init_from:  # transfer learning: a head of another size keeps its fresh initialization
        from .train.transfer import load_pretrained

        load_pretrained(model, arena, cfg.init_from)
    if cfg.freeze_except:  # before the optimizer: it copies the arena groups' hyperparameters
        from .train.transfer import freeze_except

        freeze_except(model, arena, cfg.freeze_except)
    opt = make_optimizer(cfg.optimizer, arena, run_cfg.lr, cfg.weight_decay)
    if cfg.checkpoint_format not in ("npz", "safetensors"):
        raise ValueError(f"checkpoint_format: expected 'npz' or 'safetensors', got {cfg.checkpoint_format!r}")
    from .train.augmentation import build_augment

    augment = build_augment(cfg.augment, data.input_shape)
    schedule = make_schedule(run_cfg, cfg.epochs * len(train_loader))
    trainer = Trainer(model, arena, opt, SoftmaxCrossEntropy(), schedule=schedule, run_dir=run_dir,
                      config=cfg.to_dict(), progress=progress, plot=cfg.plot,
                      monitor_every=cfg.monitor_every or None, early_stopping=cfg.early_stopping,
                      min_delta=cfg.min_delta, ema_decay=cfg.ema_decay, augment=augment, mixup_alpha=cfg.mixup,
                      seed=cfg.seed, checkpoint_name=f"checkpoint.{cfg.checkpoint_format}")
    dp = None
    if cfg.dist != "none":  # dist (issue 8)
        dp = DataParallel(comm, model, arena, cfg.dist, cfg.compress, cfg.error_feedback, cfg.local_sgd,
                          cfg.local_sgd_warmup, cfg.fingerprint_every, seed=cfg.seed,
                          compress_schedule=cfg.compress_schedule, bucket_bytes=cfg.bucket_kb * 1024,
                          optimizer=opt, average_optimizer_state=cfg.local_sgd_optimizer)
        trainer.dist = dp  # before resume: it restores this rank's error-feedback residual too
        if not rank0:
            trainer.run_dir, trainer.progress_disable, trainer.plot, trainer.checkpoint = None, True, False, False
    if cfg.resume:
        trainer.resume(cfg.resume)
    if dp is not None:
        dp.setup()  # after resume / init: rank 0's parameters everywhere, verified by hash
        if rank0:
            print(f"fasttrain: {dp.describe()}; lr {run_cfg.lr:g} (warmup {run_cfg.warmup_steps} steps)", file=sys.stderr)
    history = trainer.fit(train_loader, val_loader, cfg.epochs)
    last = history.epochs[-1] if history.epochs else {}
    if trainer.best_record is not None:  # early stopping restored the best epoch's weights
        last = trainer.best_record
    summary = {"val_acc": last.get("val_acc"), "val_loss": last.get("val_loss"), "train_acc": last.get("train_acc"),
               "epochs": trainer.epoch, "steps": trainer.step, "params": arena.size,
               "wall_time_s": time.perf_counter() - t_start, "run_dir": run_dir,
               "best_epoch": last.get("epoch") if trainer.best_record is not None else None,
               "monitor": trainer.monitor.summary() if trainer.monitor is not None else None}
    if dp is not None:  # dist (issue 8): every rank must end with rank 0's parameters
        summary.update(rank=comm.rank, ranks=comm.size, param_hash=dp.finish(broadcast=bool(cfg.early_stopping)),
                       bytes_sent_per_rank=dp.bytes_sent, allreduces=dp.allreduces, lr_run=run_cfg.lr)
    if rank0:
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def bench(argv) -> int:
    """Forward to bench.run.main(argv); `bench/` lives at the repository root (editable installs)."""
    try:
        import bench.run as bench_run
    except ImportError:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if root not in sys.path:
            sys.path.insert(0, root)
        try:
            import bench.run as bench_run
        except ImportError as exc:
            print(f"fasttrain bench: the benchmark package 'bench' is not available (looked on sys.path and in "
                  f"{root}; it ships with the source repository, not with installed wheels): {exc}", file=sys.stderr)
            return 1
    return int(bench_run.main(list(argv)) or 0)


def check(cfg: Config, overfit_steps: int = 300) -> int:
    from .train.sanity import run_checks

    results = run_checks(cfg, max_steps=overfit_steps)
    for r in results:
        print(r)
    failed = [r for r in results if not r.passed]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed" + (": FAILED" if failed else ""))
    return 1 if failed else 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after 'bench' belongs to bench.run's own parser
        return bench(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "info":
        import fasttrain as ft

        print(json.dumps({"build_info": ft.build_info(), "backends": ft.backends()}, indent=2, default=str))
        return 0
    from .train import TrainingDiverged

    try:
        cfg = resolve_config(args)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"fasttrain: config error: {exc}", file=sys.stderr)
        return 1
    if args.command == "check":
        return check(cfg, args.overfit_steps)
    if args.command == "tune":
        from .train.tune import tune

        tune(cfg, coarse_trials=args.coarse_trials, fine_trials=args.fine_trials, coarse_epochs=args.coarse_epochs,
             fine_epochs=args.fine_epochs, lr_range=tuple(args.lr_range), wd_range=tuple(args.wd_range),
             workers=args.workers, out_dir=args.out)
        return 0
    try:
        from .parallel.data_parallel import run_guarded  # under mpirun: a failing rank aborts the job

        summary = run_guarded(lambda: train(cfg, progress=False if args.quiet else None))
    except TrainingDiverged as exc:
        print(f"fasttrain: {exc}", file=sys.stderr)
        return 2
    if summary.get("rank", 0) != 0:
        return 0
    if summary.get("monitor"):
        from .train.monitor import Monitor

        print(Monitor.format_summary(summary["monitor"]))
    # the run's result is the last line a user sees
    print(f"final validation accuracy {summary['val_acc']:.4f} after {summary['epochs']} epochs "
          f"({summary['steps']} steps, {summary['params']} parameters); wall time {summary['wall_time_s']:.1f} s; "
          f"run folder {summary['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
