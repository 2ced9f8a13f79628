"""The run a Config describes, assembled in one place: data, model, parameter arena, optimizer,
schedule, data parallelism and the Trainer. `fasttrain train` (cli.py) and the hyperparameter
search (tune.py) both call `run`, so a trial trains exactly what the command line would."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from ..config import Config, save_config


#: the --schedule names `make_schedule` builds (every schedule of fasttrain.schedules)
SCHEDULES = ("constant", "step", "exponential", "inverse_time", "cosine", "linear", "inverse_sqrt", "cosine_restarts")


def make_schedule(cfg: Config, total_steps: int, steps_per_epoch: int):
    """step -> lr from fasttrain.schedules, after a linear warmup of cfg.warmup_steps. Decay
    periods are given in epochs (cfg.decay_epochs) so a config means the same for any batch size:
    step decay (Krizhevsky et al. 2012), exponential, 1/t, cosine to min_lr over the run
    (Loshchilov & Hutter, "SGDR", 2017, one cycle), linear to min_lr, inverse square root
    (Vaswani et al. 2017) and cosine with warm restarts (SGDR: cycles of decay_epochs, each
    restart_mult times longer)."""
    from .. import schedules

    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    period = cfg.decay_epochs * max(steps_per_epoch, 1)
    args = {"constant": {}, "step": {"step_size": period, "gamma": cfg.lr_decay},
            "exponential": {"gamma": cfg.lr_decay ** (1.0 / period)},
            "inverse_time": {"decay_rate": cfg.lr_decay, "decay_steps": period},
            "cosine": {"total_steps": max(total_steps, 1), "min_lr": cfg.min_lr},
            "linear": {"total_steps": max(total_steps, 1), "end_lr": cfg.min_lr},
            "inverse_sqrt": {},
            "cosine_restarts": {"period": period, "mult": cfg.restart_mult, "min_lr": cfg.min_lr}}[cfg.schedule]
    return schedules.from_config({"name": cfg.schedule, "lr": cfg.lr, "warmup_steps": cfg.warmup_steps, **args})


def snapshot_steps(cfg: Config, total_steps: int, steps_per_epoch: int) -> list[int]:
    """The steps inside the run where a cosine_restarts cycle ends (snapshot ensembles)."""
    from .ensemble import restart_boundaries

    period = cfg.decay_epochs * max(steps_per_epoch, 1)
    ends = restart_boundaries(period, total_steps // period + 1, cfg.restart_mult)  # cycles never shrink
    return [e for e in ends if e <= total_steps]


def make_optimizer(name: str, arena, lr: float, weight_decay: float):
    from .. import optim
    from ..validation import optimizer_names

    if name.lower() not in optimizer_names():
        raise ValueError(f"optimizer: expected one of {', '.join(optimizer_names())}, got {name!r}")
    cls = {k.lower(): getattr(optim, k) for k in optim.__all__}[name.lower()]
    return cls(arena, lr=lr, weight_decay=weight_decay)


def resume_config(path: str, given: dict) -> tuple[Config, list]:
    """The config a resumed run continues with: the one stored in checkpoint `path` (the run's
    own: its augmentation, schedule length, EMA, early stopping...), with `given` (the keys the
    user set again, e.g. a longer --epochs) applied on top; run_dir defaults to the checkpoint's
    folder, so the run continues where it was. Returns (config, [(key, run's value, new value)]
    for each given key that changes the run's value)."""
    from ..config import field_types, make_config
    from ..validation import RULES, ConfigError, read_checkpoint_for, resume_file

    RULES["resume"]("resume", path)
    path = resume_file(path)
    _, meta = read_checkpoint_for("resume", path)
    known = field_types()
    # keys of an older version that no longer exist are left out; their behaviour is gone too
    saved = {k: v for k, v in (meta.get("config") or {}).items() if k in known}
    # how the model is cut across ranks is the launch's choice, not the run's: a pipelined
    # checkpoint resumes in one process, and a single process's under --pipeline-stages
    from ..parallel.pipeline import PIPELINE_DEFAULTS

    saved.update(PIPELINE_DEFAULTS)
    try:
        base = make_config(saved)
    except (KeyError, ValueError) as exc:
        raise ConfigError("resume", path, "a checkpoint whose stored config this version reads",
                          detail=f"got {path!r}: {exc.args[0]}") from None
    overrides = {**given, "resume": path}
    overrides.setdefault("run_dir", os.path.dirname(path) or ".")
    cfg = make_config(overrides, base)
    changed = [(k, getattr(base, k), getattr(cfg, k)) for k in given
               if k not in ("resume", "run_dir") and getattr(base, k) != getattr(cfg, k)]
    return cfg, changed


def preflight(cfg: Config) -> dict:
    """Every check that needs neither the data nor the run folder: the config's keys
    (fasttrain.validation) and the checkpoint files it names, read once here: returns
    {'resume' | 'init_from': (arrays, meta)}. Raises ConfigError."""
    from ..validation import check_model, read_checkpoint_for, resume_file, validate

    validate(cfg)
    files = {"init_from": cfg.init_from, "resume": cfg.resume and resume_file(cfg.resume)}
    checkpoints = {key: read_checkpoint_for(key, path) for key, path in files.items() if path}
    from ..data.catalog import peek_dataset

    # known without reading the data (and not resized by image_size)
    shape = peek_dataset(cfg.dataset, cfg.data_path) if cfg.image_size is None else None
    if shape is not None and (checkpoints or cfg.freeze_except is not None):
        # the model's names and shapes, on the host: enough to hold the checkpoints against it
        from ..arena import ParamArena
        from ..models import build

        model = build(cfg.model, *shape, cfg.dropout, seed=cfg.seed)
        check_model(cfg, model, ParamArena.for_model(model, seed=cfg.seed), checkpoints)
    return checkpoints


def run(cfg: Config, progress: bool | None = None, checkpoints: dict | None = None) -> dict:
    """Run the training a config describes; returns a summary dict (also saved as summary.json).
    Every check runs before the data loads (ConfigError) and the run folder is made only after
    the data, the model and the checkpoints it names passed theirs. checkpoints: what preflight(cfg)
    returned, when the caller ran it already."""
    t_start = time.perf_counter()
    checkpoints = preflight(cfg) if checkpoints is None else checkpoints
    import fasttrain as ft
    from ..data import ChannelStandardizer, DataLoader, load_dataset
    from ..losses import SoftmaxCrossEntropy
    from ..models import build
    from ..validation import check_data, check_model
    from .trainer import Trainer

    if cfg.threads is not None:
        ft.set_num_threads(cfg.threads)
    if cfg.backend is not None:
        ft.set_backend(cfg.backend)
    from ..device import array_module

    xp = array_module(cfg.device)
    # data parallel: one code path for 1 rank (LocalComm) and K ranks under mpirun, so the
    # single-process run is the K=1 case of the distributed one rather than a separate loop
    from ..parallel.data_parallel import DataParallel, ShardedLoader, scaled_lr, world_comm
    from ..parallel.grid import Grid

    world = world_comm(cfg.dist, cfg.pipeline_stages)
    # pipeline parallelism: S stages x D replicas; `comm` is this rank's data-parallel group
    grid = Grid(world, cfg.pipeline_stages)
    comm = grid.dp
    rank0 = world.rank == 0   # progress, metrics, plots, checkpoints and validation: rank 0 only
    pipe = None

    data = load_dataset(cfg.dataset, cfg.data_path, cfg.val_fraction, cfg.seed,
                        image_size=cfg.image_size).limit(cfg.limit)
    check_data(cfg, data)
    # dropout masks differ per rank (a rank's own stream); parameters come from rank 0's broadcast
    model = build(cfg.model, data.input_shape, data.num_classes, cfg.dropout, seed=cfg.seed + 7919 * comm.rank)
    if cfg.pipeline_stages > 1 or cfg.micro_batches > 1:  # this rank's stage of the model, in its own arena
        from types import SimpleNamespace

        from ..parallel.pipeline import Pipeline

        if cfg.init_from:  # the whole model loads the file (a new head keeps its seeded init); each stage keeps its part
            from .transfer import load_pretrained

            load_pretrained(model, ft.ParamArena.for_model(model, seed=cfg.seed), cfg.init_from)
        pipe = Pipeline(model, grid.pipe, cfg.micro_batches, cfg.pipeline_schedule, data.input_shape, seed=cfg.seed)
        # checkpoints hold the whole model: checked against its parameters, not the stage's
        check_model(cfg, model, SimpleNamespace(named=lambda: {p.name: p for p in model.parameters()}), checkpoints)
        model, arena = pipe.module, pipe.arena
    else:
        arena = ft.ParamArena.for_model(model, seed=cfg.seed, xp=xp)
        check_model(cfg, model, arena, checkpoints)  # again: a dataset read from files may hold another shape

    run_dir = cfg.run_dir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    if world.size > 1:
        run_dir = world.bcast(run_dir, root=0)  # one timestamp for every rank
    if rank0:
        os.makedirs(run_dir, exist_ok=True)
        save_config(cfg, os.path.join(run_dir, "config.toml"))

    norm = ChannelStandardizer().fit(data.x_train)  # statistics of the training split only
    x_train, x_val = norm(data.x_train), norm(data.x_val)
    train_loader = DataLoader(x_train, data.y_train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    val_loader = DataLoader(x_val, data.y_val, 256, shuffle=False)
    run_cfg = cfg  # the lr and warmup the run uses: under dist, after linear scaling by the rank count
    if cfg.dist != "none":
        train_loader = ShardedLoader(train_loader, comm.rank, comm.size)
        lr, warmup = scaled_lr(cfg.lr, comm.size, cfg.warmup_steps, len(train_loader), cfg.lr_scaling)
        run_cfg = dataclasses.replace(cfg, lr=lr, warmup_steps=warmup)
        val_loader = val_loader if comm.rank == 0 else None   # validated by replica 0 (all its stages)

    if cfg.init_from and pipe is None:  # transfer learning: a head of another size keeps its fresh initialization
        from .transfer import load_pretrained

        load_pretrained(model, arena, cfg.init_from)
    if cfg.freeze_except:  # before the optimizer: it copies the arena groups' hyperparameters
        from .transfer import freeze_except

        # a stage freezes its part of the whole model's last-N split
        freeze_except(model, arena, cfg.freeze_except, whole=pipe.model if pipe is not None else None)
    opt = make_optimizer(cfg.optimizer, arena, run_cfg.lr, cfg.weight_decay)
    from .augmentation import build_augment

    augment = build_augment(cfg.augment, data.input_shape, x_train=x_train)
    total_steps = cfg.epochs * len(train_loader)
    schedule = make_schedule(run_cfg, total_steps, len(train_loader))
    trainer = Trainer(model, arena, opt, SoftmaxCrossEntropy(), schedule=schedule, run_dir=run_dir,
                      config=cfg.to_dict(), progress=progress, plot=cfg.plot,
                      monitor_every=cfg.monitor_every or None, early_stopping=cfg.early_stopping,
                      min_delta=cfg.min_delta, ema_decay=cfg.ema_decay, augment=augment, mixup_alpha=cfg.mixup,
                      seed=cfg.seed, checkpoint_name=f"checkpoint.{cfg.checkpoint_format}")
    if cfg.snapshots:  # Huang et al. 2017: the weights at the ends of the last N SGDR cycles
        from .ensemble import SnapshotEnsemble

        trainer.snapshots = SnapshotEnsemble(arena, max_snapshots=cfg.snapshots)
        trainer.snapshot_steps = snapshot_steps(cfg, total_steps, len(train_loader))
    trainer.pipeline = pipe
    if not rank0:
        trainer.run_dir, trainer.progress_disable, trainer.plot, trainer.checkpoint = None, True, False, False
        trainer.monitor = None  # its warnings and summary are rank 0's to give
    if pipe is not None:
        trainer.checkpoint = comm.rank == 0   # replica 0's stages gather the one checkpoint on rank 0
    dp = None
    if cfg.dist != "none":
        dp = DataParallel(comm, model, arena, cfg.dist, cfg.compress, cfg.error_feedback, cfg.local_sgd,
                          cfg.local_sgd_warmup, cfg.fingerprint_every, seed=cfg.seed,
                          compress_schedule=cfg.compress_schedule, bucket_bytes=cfg.bucket_kb * 1024,
                          optimizer=opt, average_optimizer_state=cfg.local_sgd_optimizer,
                          collective_timeout=cfg.collective_timeout)
        trainer.dist = dp  # before resume: it restores this rank's error-feedback residual too
    if cfg.resume:
        from ..validation import resume_file

        trainer.resume(resume_file(cfg.resume))
    if dp is not None:
        dp.setup()  # after resume / init: rank 0's parameters everywhere, verified by hash
        if rank0:
            print(f"fasttrain: {dp.describe()}; lr {run_cfg.lr:g} (warmup {run_cfg.warmup_steps} steps)", file=sys.stderr)
    if pipe is not None and rank0:
        print(f"fasttrain: {pipe.describe()}" + (f" x {grid.replicas} data-parallel replicas" if grid.replicas > 1 else ""),
              file=sys.stderr)
    history = trainer.fit(train_loader, val_loader, cfg.epochs)
    last = history.epochs[-1] if history.epochs else {}
    if trainer.best_record is not None:  # early stopping restored the best epoch's weights
        last = trainer.best_record
    summary = {"val_acc": last.get("val_acc"), "val_loss": last.get("val_loss"), "train_acc": last.get("train_acc"),
               "epochs": trainer.epoch, "steps": trainer.step, "params": arena.size,
               "wall_time_s": time.perf_counter() - t_start, "run_dir": run_dir,
               "best_epoch": last.get("epoch") if trainer.best_record is not None else None,
               "monitor": trainer.monitor.summary() if trainer.monitor is not None else None}
    if trainer.snapshots is not None and len(trainer.snapshots) and val_loader is not None:
        from .ensemble import ensemble_predict

        predict = None if pipe is None else lambda xb: pipe.predict(xb if pipe.first else None, n=len(xb))
        probs = ensemble_predict(model, arena, trainer.snapshots, val_loader.x, batch_size=256, predict=predict)
        acc = None if probs is None else float((probs.argmax(axis=1) == val_loader.y).mean())
        if pipe is not None and pipe.stages > 1:  # the last stage has the logits, rank 0 writes the summary
            acc = pipe.comm.bcast(acc, root=pipe.stages - 1)
        summary.update(snapshot_val_acc=acc, snapshot_steps=list(trainer.snapshots.steps))
    if dp is not None:  # every rank must end with rank 0's parameters (checked by hash)
        summary.update(rank=world.rank, ranks=world.size, param_hash=dp.finish(broadcast=bool(cfg.early_stopping)),
                       bytes_sent_per_rank=dp.bytes_sent, allreduces=dp.allreduces, lr_run=run_cfg.lr,
                       hosts=len(set(dp.hosts)), allreduce_algorithm=dp.algorithm)
    if pipe is not None:
        summary.update(rank=world.rank, ranks=world.size, params=sum(p.size for p in pipe.model.parameters()),
                       stage=grid.stage, stages=grid.stages, replicas=grid.replicas, pipeline=pipe.describe())
    if rank0:
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary
