"""Command line: `fasttrain train [--config FILE] [--epochs N] ...`, `fasttrain check` (sanity
checks), `fasttrain tune` (random search over lr and weight decay), `fasttrain bench` (the
repository's benchmarks) and `fasttrain info`.
Every Config field is a flag (`batch_size` -> `--batch-size`); flags override the TOML file,
which overrides the defaults. The resolved config is saved as config.toml in the run folder."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

from .config import Config, field_help, field_types, load_config, make_config


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (exit status 2, no usage block), and values such
    as -1e-4 or -inf read as negative numbers rather than as unknown options."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.I)

    def error(self, message):
        self.exit(error(f"{message} (see {self.prog} --help)"))


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


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="TOML file of config keys")
    parser.add_argument("--debug", action="store_true",
                        help="full Python tracebacks instead of one-line errors (also FASTTRAIN_DEBUG=1)")
    _add_config_flags(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fasttrain", description="fasttrain: train, check and tune small neural networks on the CPU (or a GPU), "
        "one process or many under mpiexec.",
        epilog="Every config key is a flag of train, check and tune (batch_size -> --batch-size); flags override "
        "the --config TOML file, which overrides the defaults. `fasttrain train --help` lists them.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model (default: a small CNN on the bundled digits)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(train)
    sub.add_parser("info", help="print build information and available kernel backends")
    check = sub.add_parser("check", help="sanity checks: initial loss ~ ln(C), overfit 20 examples, gradient check")
    check.add_argument("--overfit-steps", type=int, default=300, help="step budget of the overfit check (default: 300)")
    _add_common(check)
    tune = sub.add_parser("tune", help="random search in log space over lr and weight decay (coarse, then fine)")
    tune.add_argument("--coarse-trials", type=int, default=8, help="random trials of the coarse stage (default: 8)")
    tune.add_argument("--fine-trials", type=int, default=4,
                      help="trials of the fine stage, in ranges narrowed around the best coarse ones (default: 4)")
    tune.add_argument("--coarse-epochs", type=int, default=2, help="epochs each coarse trial trains (default: 2)")
    tune.add_argument("--fine-epochs", type=int, default=4, help="epochs each fine trial trains (default: 4)")
    tune.add_argument("--lr-range", type=float, nargs=2, default=(1e-4, 1e-1), metavar=("LO", "HI"),
                      help="learning rates to sample, log-uniformly (default: 1e-4 1e-1)")
    tune.add_argument("--wd-range", type=float, nargs=2, default=(1e-6, 1e-2), metavar=("LO", "HI"),
                      help="weight decays to sample, log-uniformly (default: 1e-6 1e-2)")
    tune.add_argument("--workers", type=int, default=None, help="parallel trial processes (default: CPU count)")
    tune.add_argument("--out", default=None, help="output folder (default: runs/tune-<timestamp>)")
    _add_common(tune)
    sub.add_parser("bench", help="run the repository's benchmarks (bench.run; arguments are forwarded)",
                   add_help=False)
    return parser


def config_sources(args: argparse.Namespace) -> dict[str, str]:
    """Key -> how the user named it: '--flag' for flags given, 'key (in FILE)' for TOML keys."""
    sources = {}
    if args.config:
        from .config import read_toml

        try:
            sources = {k: f"{k} (in {args.config})" for k in read_toml(args.config)}
        except (ValueError, OSError):  # resolve_config reports the file
            pass
    sources.update({k: "--" + k.replace("_", "-") for k in field_types() if getattr(args, k, None) is not None})
    return sources


def resolve_config(args: argparse.Namespace, notes: list | None = None) -> Config:
    """Defaults < TOML file < flags, every key checked (fasttrain.validation): a ConfigError names
    the flag, key or environment variable, the value and what was expected. With --resume, the
    checkpoint's run config < TOML file < flags; `notes` receives what the user should be told
    once every check passed (the config's origin, each override)."""
    try:
        base = load_config(args.config) if args.config else Config()
        flags = {k: getattr(args, k) for k in field_types() if getattr(args, k) is not None}
        cfg = make_config(flags, base)
    except (KeyError, ValueError, OSError) as exc:
        from .validation import ConfigError

        # an OSError's own text omits the path; the user needs both the path and why it failed
        why = (f"got {args.config!r} ({exc.strerror or exc})" if isinstance(exc, OSError)
               else f"got {exc.args[0]}")
        raise ConfigError("--config", args.config, "a TOML file of config keys", detail=why) from None
    if cfg.resume:  # the run's own config, from its checkpoint; what the user gave again overrides it
        from .train.run import resume_config

        sources = config_sources(args)
        cfg, overridden = resume_config(cfg.resume, {k: getattr(cfg, k) for k in sources})
        notes = [] if notes is None else notes
        notes.append(f"resuming {cfg.resume} with the config of its run; the run continues in {cfg.run_dir}")
        notes += [f"{sources[key]} overrides the run's {key} = {old!r} with {new!r}" for key, old, new in overridden]
    from .validation import validate

    validate(cfg)
    _note_oversubscription(cfg, config_sources(args), notes)
    return cfg


def _note_oversubscription(cfg, sources: dict, notes: list | None) -> None:
    """Allowed, but said: more threads than this process's share of the cores makes every parallel
    region wait for threads that are not scheduled (several times slower, not faster)."""
    from .settings import default_threads, local_ranks

    share = default_threads()
    if notes is not None and cfg.threads is not None and cfg.threads > share:
        ranks = local_ranks()
        whose = f"its share with {ranks} ranks on this machine" if ranks > 1 else "the cores this process may use"
        notes.append(f"{_name('threads', sources)} {cfg.threads} is more than {share}, {whose}: the extra "
                     "threads wait for a core and slow every kernel down")


def _name(key: str, sources: dict) -> str:
    if key in sources:
        return sources[key]
    return "--" + key.replace("_", "-") if key in field_types() else key


def error(message: str) -> int:
    """The CLI's one-line error (rank 0 only under an MPI launcher: every rank checks the same
    config, and lines written by several ranks at once arrive glued together); exit status 2."""
    from .settings import launcher_rank

    if launcher_rank() == 0:
        sys.stderr.flush()  # then the whole line goes out in one write
        sys.stderr.write(f"fasttrain: error: {' '.join(str(message).split())}\n")
        sys.stderr.flush()
    return 2


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
    from . import settings
    from .validation import ConfigError

    if args.debug:  # the run's own layers (run_guarded under MPI) read the setting too
        os.environ["FASTTRAIN_DEBUG"] = "1"
    debug = settings.debug()
    sources: dict = {}
    try:
        sources = config_sources(args)
        notes: list = []
        cfg = resolve_config(args, notes)
        return _command(args, cfg, notes)
    except ConfigError as exc:
        if debug:
            raise
        return error(exc.render(_name(exc.key, sources)))
    except KeyboardInterrupt as exc:
        from .train import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted) and exc.checkpoint:
            folder = os.path.dirname(exc.checkpoint) or "."
            return error(f"{exc}: `fasttrain train --resume {folder}` continues the run exactly") + 128
        return error(str(exc) or "interrupted") + 128
    except Exception as exc:  # noqa: BLE001 - one line for the user; --debug shows the traceback
        from .data import DataError
        from .train import TrainingDiverged

        if debug:
            raise
        if isinstance(exc, (TrainingDiverged, DataError)):   # their messages are the one line
            return error(str(exc))
        error(f"{type(exc).__name__}: {exc} (--debug or FASTTRAIN_DEBUG=1 shows the traceback)")
        return 1


def _command(args, cfg: Config, notes: list) -> int:
    from .validation import note

    if args.command != "train":
        for line in notes:
            note(line)
    if args.command == "check":
        return check(cfg, args.overfit_steps)
    if args.command == "tune":
        from .train.tune import tune
        from .validation import ConfigError, integer, number

        for name, rule in (("coarse_trials", integer(lo=1)), ("fine_trials", integer(lo=0)),
                           ("coarse_epochs", integer(lo=1)), ("fine_epochs", integer(lo=1)),
                           ("workers", integer(lo=1, optional=True))):
            rule("--" + name.replace("_", "-"), getattr(args, name))
        for name in ("lr_range", "wd_range"):
            lo, hi = getattr(args, name)
            flag = "--" + name.replace("_", "-")
            number(0, lo_open=True)(flag, lo)
            if not lo <= hi < float("inf"):
                raise ConfigError(flag, f"{lo:g} {hi:g}", "LO HI with 0 < LO <= HI, both finite")

        tune(cfg, coarse_trials=args.coarse_trials, fine_trials=args.fine_trials, coarse_epochs=args.coarse_epochs,
             fine_epochs=args.fine_epochs, lr_range=tuple(args.lr_range), wd_range=tuple(args.wd_range),
             workers=args.workers, out_dir=args.out)
        return 0
    from .parallel.data_parallel import run_guarded  # under mpirun: a failing rank aborts the job
    from .train.run import preflight, run

    checkpoints = preflight(cfg)  # before run_guarded: a config error is one line, not an aborted job
    for line in notes:
        note(line)
    summary = run_guarded(lambda: run(cfg, progress=False if args.quiet else None, checkpoints=checkpoints))
    if summary.get("rank", 0) != 0:
        return 0
    if summary.get("snapshot_val_acc") is not None:
        print(f"snapshot ensemble of {len(summary['snapshot_steps'])} (steps {summary['snapshot_steps']}): "
              f"validation accuracy {summary['snapshot_val_acc']:.4f}")
    # the run's result is the last line a user sees
    acc = "none" if summary["val_acc"] is None else f"{summary['val_acc']:.4f}"
    print(f"final validation accuracy {acc} after {summary['epochs']} epochs "
          f"({summary['steps']} steps, {summary['params']} parameters); wall time {summary['wall_time_s']:.1f} s; "
          f"run folder {summary['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
