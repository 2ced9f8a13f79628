"""Command line: `fasttrain train [--config FILE] [--epochs N] ...`, `fasttrain check` (sanity
checks), `fasttrain tune` (random search over lr and weight decay), `fasttrain bench` (the
repository's benchmarks) and `fasttrain info`.
Every Config field is a flag (`batch_size` -> `--batch-size`); flags override the TOML file,
which overrides the defaults. The resolved config is saved as config.toml in the run folder."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .config import Config, field_help, field_types, load_config, make_config


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

        from .train.run import run

        summary = run_guarded(lambda: run(cfg, progress=False if args.quiet else None))
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
