"""Command line: `fasttrain train [--config FILE] [--epochs N] ...` and `fasttrain info`.
Every Config field is a flag (`batch_size` -> `--batch-size`); flags override the TOML file,
which overrides the defaults. The resolved config is saved as config.toml in the run folder."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .config import Config, field_types, load_config, make_config, save_config


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    defaults = Config()
    for name, typ in field_types().items():
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        if typ is bool:
            parser.add_argument(flag, dest=name, default=None, action=argparse.BooleanOptionalAction,
                                help=f"(default: {default})")
        else:
            parser.add_argument(flag, dest=name, default=None, type=typ, metavar=typ.__name__.upper(),
                                help=f"(default: {default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fasttrain", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model (default: a small CNN on the bundled digits)")
    train.add_argument("--config", default=None, help="TOML file of config keys")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_flags(train)
    sub.add_parser("info", help="print build information and available kernel backends")
    return parser


def resolve_config(args: argparse.Namespace) -> Config:
    base = load_config(args.config) if args.config else Config()
    flags = {k: getattr(args, k) for k in field_types() if getattr(args, k) is not None}
    return make_config(flags, base)


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
    run_dir = cfg.run_dir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(run_dir, exist_ok=True)
    save_config(cfg, os.path.join(run_dir, "config.toml"))

    data = load_dataset(cfg.dataset, cfg.data_path, cfg.val_fraction, cfg.seed).limit(cfg.limit)
    norm = ChannelStandardizer().fit(data.x_train)  # statistics of the training split only
    x_train, x_val = norm(data.x_train), norm(data.x_val)
    train_loader = DataLoader(x_train, data.y_train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    val_loader = DataLoader(x_val, data.y_val, 256, shuffle=False)

    model = build(cfg.model, data.input_shape, data.num_classes, cfg.dropout, seed=cfg.seed)
    arena = ft.ParamArena.for_model(model, seed=cfg.seed)
    opt = make_optimizer(cfg.optimizer, arena, cfg.lr, cfg.weight_decay)
    schedule = make_schedule(cfg, cfg.epochs * len(train_loader))
    trainer = Trainer(model, arena, opt, SoftmaxCrossEntropy(), schedule=schedule, run_dir=run_dir,
                      config=cfg.to_dict(), progress=progress, plot=cfg.plot)
    if cfg.resume:
        trainer.resume(cfg.resume)
    history = trainer.fit(train_loader, val_loader, cfg.epochs)
    last = history.epochs[-1] if history.epochs else {}
    summary = {"val_acc": last.get("val_acc"), "val_loss": last.get("val_loss"), "train_acc": last.get("train_acc"),
               "epochs": trainer.epoch, "steps": trainer.step, "params": arena.size,
               "wall_time_s": time.perf_counter() - t_start, "run_dir": run_dir}
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv=None) -> int:
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
    try:
        summary = train(cfg, progress=False if args.quiet else None)
    except TrainingDiverged as exc:
        print(f"fasttrain: {exc}", file=sys.stderr)
        return 2
    print(f"final validation accuracy {summary['val_acc']:.4f} after {summary['epochs']} epochs "
          f"({summary['steps']} steps, {summary['params']} parameters); wall time {summary['wall_time_s']:.1f} s; "
          f"run folder {summary['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
