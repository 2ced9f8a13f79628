"""The training loop: forward, loss, backward, one fused optimizer step; validation each epoch;
metrics as JSON lines; a checkpoint per epoch (and on Ctrl-C, mid-epoch); a learning-curve PNG; and the cs231n-style
'command center' safety stop when the loss explodes (> 3x its initial value, or NaN)."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..settings import get_logger
from .checkpoint import apply_checkpoint, module_buffers, read_checkpoint, save_checkpoint
from .interrupt import StopRequest, TrainingInterrupted, graceful_sigint
from .monitor import Monitor

log = get_logger(__name__)


def _on_arena(key: str) -> bool:
    """Whether checkpoint extra `key` is laid out like the parameter arena along its last axis."""
    return key in ("ef_residual", "ema/shadow", "best/weights") or key.startswith("snapshot/")


class TrainingDiverged(RuntimeError):
    """Raised by Trainer.fit when the loss explodes; `history` holds what was recorded."""

    def __init__(self, message: str, history: "History"):
        super().__init__(message)
        self.history = history


@dataclass
class History:
    steps: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    epochs: list = field(default_factory=list)   # one dict per epoch (train/val loss and accuracy)
    initial_loss: float | None = None

    def to_dict(self) -> dict:
        return {"steps": self.steps, "losses": self.losses, "epochs": self.epochs,
                "initial_loss": self.initial_loss}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(list(d["steps"]), list(d["losses"]), list(d["epochs"]), d["initial_loss"])


class Trainer:
    """Trains `model` whose parameters live in `arena`.

    schedule: None (constant lr) or a function step -> lr (schedules are pure functions of the
    step; the trainer owns the step counter). run_dir: where metrics.jsonl, checkpoint.npz and
    learning_curve.png go (None: nothing is written). config: a dict stored in checkpoints.
    progress: tqdm's `disable` (None hides the bar when the output is not a terminal).

    monitor_every: sample the command center (fasttrain.train.monitor) every N steps (None: off).
    early_stopping: patience in epochs without a val_loss improvement of more than min_delta; at
    the end of fit the best epoch's weights (and BN statistics) are restored and written to
    checkpoint_best.npz; checkpoint.npz keeps the last step's state, which resumes exactly (None: off).
    ema_decay: keep an EMA of the weights (fasttrain.train.EMA) and validate with it (None: off).
    augment: callable(x, rng) -> x applied to each training batch with a generator keyed by
    (seed, step); mixup_alpha: mix examples and labels (Zhang et al. 2018) with Beta(alpha, alpha)."""

    def __init__(self, model, arena, optimizer, loss_fn, schedule=None, run_dir=None, config: dict | None = None,
                 explode_factor: float = 3.0, progress: bool | None = None, plot: bool = True,
                 checkpoint: bool = True, monitor_every: int | None = 50, early_stopping: int | None = None,
                 min_delta: float = 0.0, ema_decay: float | None = None, augment=None,
                 mixup_alpha: float | None = None, seed: int = 0, checkpoint_name: str = "checkpoint.npz",
                 dist=None):
        self.model, self.arena, self.optimizer, self.loss_fn = model, arena, optimizer, loss_fn
        self.schedule = schedule
        self.run_dir = os.fspath(run_dir) if run_dir is not None else None
        self.config = dict(config or {})
        self.explode_factor = explode_factor
        self.progress_disable = None if progress is None else not progress
        self.plot = plot
        self.checkpoint = checkpoint
        self.step = 0
        self.epoch = 0
        # mid-epoch state of an interrupted run: batches of `epoch` done, and their (examples,
        # correct, loss sum, seconds) for the epoch's record
        self.batch_in_epoch = 0
        self._epoch_partial: tuple | None = None
        self._stop = StopRequest()
        self.history = History()
        self._metrics = None   # metrics.jsonl, open (append, line-buffered) during fit
        # the optimizer's lr before any schedule step is the run's peak: the monitor's reference
        self.monitor = (Monitor(model, arena, monitor_every, base_lr=float(optimizer.lr)) if monitor_every
                        else None)
        if early_stopping is not None and (isinstance(early_stopping, bool) or early_stopping < 1):
            raise ValueError(f"Trainer(early_stopping): expected a patience >= 1 epochs or None, got {early_stopping!r}")
        if min_delta < 0:
            raise ValueError(f"Trainer(min_delta): expected >= 0, got {min_delta!r}")
        self.early_stopping, self.min_delta = early_stopping, float(min_delta)
        self.best_record: dict | None = None   # the best epoch's record (early stopping)
        self._best_state = None                # (arena values, buffers) of that epoch
        self._bad_epochs = 0
        if ema_decay is not None:
            from .averaging import EMA

            self.ema = EMA(arena, ema_decay)
        else:
            self.ema = None
        self.augment = augment
        if mixup_alpha:
            from ..data.augment import Mixup

            self.mixup = Mixup(mixup_alpha)
        else:
            self.mixup = None
        self.seed = int(seed)
        self.checkpoint_name = checkpoint_name
        self.dist = dist  # a fasttrain.parallel.DataParallel policy, or None
        # snapshot ensembles: a SnapshotEnsemble and the steps at which it copies the weights
        self.snapshots, self.snapshot_steps = None, ()
        self.pipeline = None  # a fasttrain.parallel.Pipeline: `model` is then this rank's stage of it
        if self.run_dir is not None:
            os.makedirs(self.run_dir, exist_ok=True)

    # -- files ----------------------------------------------------------------------------------
    def _path(self, name: str) -> str | None:
        return None if self.run_dir is None else os.path.join(self.run_dir, name)

    def _log_metrics(self, record: dict) -> None:
        if self._metrics is not None:
            self._metrics.write(json.dumps(record) + "\n")

    def save(self, path) -> None:
        meta = {"step": self.step, "epoch": self.epoch, "history": self.history.to_dict(),
                "config": self.config}
        if self.batch_in_epoch:
            meta["batch_in_epoch"], meta["epoch_partial"] = self.batch_in_epoch, list(self._epoch_partial)
        # arrays laid out like the arena along their last axis (a pipeline maps each stage's into
        # the whole model's layout), then the others
        on_arena = dict(self.dist.state_dict()) if self.dist is not None else {}  # dist: error-feedback residuals
        extra = {}
        if self.ema is not None:
            state = self.ema.state_dict()
            on_arena["ema/shadow"] = state.pop("shadow")
            meta["ema"] = state
        if self.snapshots is not None:
            state = self.snapshots.state_dict()
            meta["snapshot_steps"] = state["steps"]
            on_arena.update({f"snapshot/{i}": a for i, a in enumerate(state["snapshots"])})
        if self.early_stopping is not None:
            meta["best"] = {"record": self.best_record, "bad_epochs": self._bad_epochs}
            if self._best_state is not None:
                weights, buffers = self._best_state
                on_arena["best/weights"] = weights
                for key, (m, name) in module_buffers(self.model).items():
                    extra[f"best/buffer/{key}"] = buffers[id(m)][name]
        if self.pipeline is not None:  # collective: every stage's share, written by the first (path None: not written)
            self.pipeline.save_checkpoint(path, self.optimizer, meta, extra=extra, arena_extra=on_arena)
            return
        save_checkpoint(path, self.model, self.arena, self.optimizer, meta, extra={**on_arena, **extra})

    def resume(self, path) -> None:
        """Continue from a checkpoint: parameters, buffers, optimizer state, step, epoch, history,
        the EMA of the weights and the early-stopping state (best epoch's weights and buffers)."""
        arrays, meta = read_checkpoint(path)
        if self.pipeline is not None:  # this stage's share of a whole-model checkpoint
            self.pipeline.apply_checkpoint(path, arrays, self.optimizer)
        else:
            apply_checkpoint(path, arrays, self.model, self.arena, self.optimizer)
        self.step, self.epoch = int(meta["step"]), int(meta["epoch"])
        self.batch_in_epoch = int(meta.get("batch_in_epoch", 0))
        self._epoch_partial = tuple(meta["epoch_partial"]) if self.batch_in_epoch else None
        self.history = History.from_dict(meta["history"])
        extra = {k[6:]: v for k, v in arrays.items() if k.startswith("extra/")}
        if self.pipeline is not None:  # this stage's part of the arrays laid out like the whole model's arena
            extra = {k: self.pipeline.from_whole(v, f"{path}: extra/{k}") if _on_arena(k) else v
                     for k, v in extra.items()}
        if self.dist is not None:  # a compressed all-reduce's error-feedback residual, this rank's
            self.dist.load_state_dict(extra)
        if self.ema is not None:
            if "ema" not in meta:
                raise ValueError(f"{path}: this trainer keeps an EMA of the weights (ema_decay={self.ema.decay}) "
                                 f"but the checkpoint has none; resume without ema_decay or from a run that had it")
            self.ema.load_state_dict({"shadow": extra["ema/shadow"], **meta["ema"]})
        elif "ema" in meta:
            log.warning("%s: the checkpoint's EMA of the weights is not resumed (this trainer has no ema_decay)", path)
        if self.snapshots is not None and "snapshot_steps" in meta:
            steps = meta["snapshot_steps"]
            self.snapshots.load_state_dict({"steps": steps,
                                            "snapshots": [extra[f"snapshot/{i}"] for i in range(len(steps))]})
        best = meta.get("best")
        if self.early_stopping is not None and best is not None:
            self.best_record, self._bad_epochs = best["record"], int(best["bad_epochs"])
            self._best_state = None
            if "best/weights" in extra:
                buffers: dict = {}
                for key, (m, name) in module_buffers(self.model).items():
                    buffers.setdefault(id(m), {})[name] = self.arena.xp.asarray(
                        extra[f"best/buffer/{key}"], dtype=m.buffers[name].dtype)
                self._best_state = (self.arena.xp.asarray(extra["best/weights"], dtype=self.arena.data.dtype), buffers)

    # -- steps ----------------------------------------------------------------------------------
    def _lr(self) -> float:
        if self.schedule is not None:
            self.optimizer.lr = float(self.schedule(self.step))
        return float(self.optimizer.lr)

    def train_step(self, xb, yb) -> tuple[float, int]:
        """One optimizer step; returns (loss, number of correct predictions in the batch)."""
        xp = self.arena.xp
        mixed = None
        if self.augment is not None or self.mixup is not None:
            from .augmentation import batch_rng

            rng = batch_rng(self.seed, self.step)
            if self.augment is not None:
                xb = self.augment(np.asarray(xb), rng)
            if self.mixup is not None:
                xb, _, y_b, lam = self.mixup(np.asarray(xb), np.asarray(yb), rng)
                mixed = (xp.asarray(y_b), lam)
        xb, yb = xp.asarray(xb), xp.asarray(yb)
        self.model.set_step(self.step)
        self._lr()
        self.arena.zero_grad()
        sample = self.monitor is not None and self.monitor.due(self.step)
        if sample:
            self.monitor.begin()
        if self.pipeline is not None:  # this rank's stage: forward, loss and backward of every micro-batch
            # with gradient buckets, each one's all-reduce across the stage's replicas starts as the
            # last micro-batch's backward completes it
            start = self.dist.bucket_starter(self.step) if self.dist is not None else None
            try:
                loss, correct = self.pipeline.train_step(xb, yb, self.loss_fn, self.step, mixed=mixed,
                                                         layer_done=start)
            finally:
                if sample:
                    self.monitor.unhook()
            if self.dist is not None:  # the stage's gradients averaged over its data-parallel replicas; even
                self.dist.after_backward(self.step)   # after a non-finite loss: buckets may be in flight
            if not math.isfinite(loss):
                return loss, 0
        else:
            loss, correct = self._forward_backward(xb, yb, mixed, sample)
            if not math.isfinite(loss):
                return loss, 0
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        if sample:
            self._log_metrics(self.monitor.end(self.step, loss, lr=self.optimizer.lr))
        self.step += 1
        if self.dist is not None:  # local SGD averages the parameters every H steps
            self.dist.after_step(self.step)
        return loss, correct

    def _forward_backward(self, xb, yb, mixed, sample: bool) -> tuple[float, int]:
        """Forward, loss and backward of the batch on this process; (loss, correct predictions),
        the loss NaN (nothing backpropagated) when it is not finite."""
        self.model.set_needs_input_grad(False)  # the gradient of the data itself feeds nothing
        try:
            logits = self.model.forward(xb)
        finally:
            if sample:
                self.monitor.unhook()
        try:
            if mixed is None:
                loss, dlogits = self.loss_fn(logits, yb)
            else:
                from ..data.augment import mixup_loss

                loss, dlogits = mixup_loss(self.loss_fn, logits, yb, mixed[0], mixed[1])
        except FloatingPointError:  # a loss that refuses non-finite values: the explosion stop reports it
            return math.nan, 0
        loss = float(loss)
        if not math.isfinite(loss):  # do not push NaN/inf gradients into the parameters
            return loss, 0
        if self.dist is not None:  # data parallel: backward, then the gradient average across ranks
            self.dist.backward(self.model, dlogits, self.step)
        else:
            self.model.backward(dlogits)
        return loss, int((logits.argmax(axis=1) == yb).sum())

    def evaluate(self, loader) -> tuple[float, float]:
        """(mean loss, accuracy) over a loader, in eval mode (BN running stats, no dropout)."""
        if self.pipeline is not None:
            return self.pipeline.evaluate(loader, self.loss_fn)
        self.model.eval()
        xp = self.arena.xp
        total_loss, correct, n = 0.0, 0, 0
        try:
            for xb, yb in loader.batches(0):
                xb, yb = xp.asarray(xb), xp.asarray(yb)
                logits = self.model.forward(xb)
                loss, _ = self.loss_fn(logits, yb)
                total_loss += float(loss) * len(yb)
                correct += int((logits.argmax(axis=1) == yb).sum())
                n += len(yb)
        finally:
            self.model.train()
        if n == 0:
            raise ValueError("Trainer.evaluate: the loader yielded no examples")
        return total_loss / n, correct / n

    def _explosion(self, loss: float) -> str | None:
        if self.history.initial_loss is None:
            self.history.initial_loss = loss
        limit = self.explode_factor * self.history.initial_loss
        if math.isfinite(loss) and loss <= limit:
            return None
        return (f"training stopped at step {self.step}: loss {loss:.4g} exceeds {self.explode_factor:g}x the initial "
                f"loss {self.history.initial_loss:.4g} (limit {limit:.4g}); the learning rate "
                f"(lr={self.optimizer.lr:g}) is probably too high: try a 3-10x smaller --lr")

    # -- the loop -------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop fit after the step in flight, as the first Ctrl-C does: the checkpoint is written
        (mid-epoch too) and fit raises TrainingInterrupted."""
        self._stop.requested = True

    def _save_last(self) -> str | None:
        """Writes the last-step checkpoint where this trainer keeps one; returns its path (or None)."""
        if not (self.checkpoint and (self.run_dir is not None or self.pipeline is not None)):
            return None
        path = self._path(self.checkpoint_name)
        self.save(path)
        return path

    def fit(self, train_loader, val_loader=None, epochs: int = 1) -> History:
        """Train until `epochs` epochs in total are done (a resumed trainer continues from its
        epoch, and batch). Raises TrainingDiverged when the loss explodes, TrainingInterrupted
        after Ctrl-C (one process) or request_stop(), once the checkpoint is written."""
        steps_per_epoch = len(train_loader)
        if steps_per_epoch == 0:
            raise ValueError("Trainer.fit(train_loader): the loader yields no batches")
        if self.batch_in_epoch > steps_per_epoch:
            raise ValueError(f"Trainer.fit(train_loader): the run stopped after batch {self.batch_in_epoch} of epoch "
                             f"{self.epoch + 1} but this loader has {steps_per_epoch} batches per epoch "
                             "(resume with the run's batch size and data)")
        self._stop.requested = False
        with graceful_sigint(self._stop, enabled=self.dist is None and self.pipeline is None):
            return self._fit(train_loader, val_loader, epochs, steps_per_epoch)

    def _fit(self, train_loader, val_loader, epochs: int, steps_per_epoch: int) -> History:
        from tqdm.auto import tqdm

        self.model.train()
        total = max(epochs - self.epoch, 0) * steps_per_epoch - (self.batch_in_epoch if epochs > self.epoch else 0)
        bar = tqdm(total=total, disable=self.progress_disable, unit="step", dynamic_ncols=True)
        if self.run_dir is not None:
            self._metrics = open(self._path("metrics.jsonl"), "a", buffering=1)
        try:
            while self.epoch < epochs:
                start = self.batch_in_epoch
                seen, correct, loss_sum, done_s = self._epoch_partial or (0, 0, 0.0, 0.0)
                t0 = time.perf_counter() - done_s
                bar.set_description(f"epoch {self.epoch + 1}/{epochs}")
                for batch, (xb, yb) in enumerate(train_loader.batches(self.epoch, start=start), start=start + 1):
                    loss, ok = self.train_step(xb, yb)
                    if self.snapshots is not None:
                        self.snapshots(self.step, self.snapshot_steps)
                    self.history.steps.append(self.step)
                    self.history.losses.append(loss)
                    reason = self._explosion(loss)
                    if reason is not None:
                        self._report_monitor()  # before the 'diverged' record, which stays the last line
                        self._log_metrics({"event": "diverged", "step": self.step, "loss": loss, "message": reason})
                        self._finish()
                        log.error(reason)
                        raise TrainingDiverged(reason, self.history)
                    seen += len(yb)
                    correct += ok
                    loss_sum += loss * len(yb)
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    self._log_metrics({"step": self.step, "epoch": self.epoch, "loss": loss,
                                       "acc": ok / len(yb), "lr": self.optimizer.lr})
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", acc=f"{correct / seen:.3f}",
                                    lr=f"{self.optimizer.lr:.2e}", img_s=f"{rate:.0f}", refresh=False)
                    if self._stop.requested:
                        self.batch_in_epoch = batch
                        self._epoch_partial = (seen, correct, loss_sum, time.perf_counter() - t0)
                        raise TrainingInterrupted(self._save_last(), self.step, self.epoch, batch)
                self.batch_in_epoch, self._epoch_partial = 0, None
                train_time = time.perf_counter() - t0
                record = {"epoch": self.epoch + 1, "step": self.step, "train_loss": loss_sum / seen,
                          "train_acc": correct / seen, "images_per_s": seen / train_time,
                          "epoch_time_s": train_time}
                if self.dist is not None:  # local SGD's average first: rank 0 validates the shared model
                    self.dist.end_epoch(self.step)
                if val_loader is not None:
                    if self.ema is not None:  # validate with the averaged weights; the raw ones for comparison
                        record["val_loss_raw"], record["val_acc_raw"] = self.evaluate(val_loader)
                        with self.ema.swap():
                            record["val_loss"], record["val_acc"] = self.evaluate(val_loader)
                    else:
                        record["val_loss"], record["val_acc"] = self.evaluate(val_loader)
                self.epoch += 1
                self.history.epochs.append(record)
                self._log_metrics(record)
                if val_loader is not None:
                    bar.write(f"epoch {self.epoch}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f}"
                              f" | val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}")
                stop = self._early_stopping_step(record) if val_loader is not None else False
                if self.dist is not None:  # rank 0 validated: its early-stopping decision goes to all
                    stop = self.dist.agree(stop)
                saved = self._save_last()
                if stop:
                    break
                if self._stop.requested and self.epoch < epochs:   # pressed during validation: saved above
                    raise TrainingInterrupted(saved, self.step, self.epoch, 0)
            if self._best_state is not None:
                self._restore_best()
                if self.checkpoint and (self.run_dir is not None or self.pipeline is not None):
                    # the checkpoint stays the last step's, to resume; a pipeline's save is collective
                    root, ext = os.path.splitext(self.checkpoint_name)
                    self.save(self._path(f"{root}_best{ext}"))
            self._report_monitor()
        finally:
            bar.close()
            if self._metrics is not None:
                self._metrics.close()
                self._metrics = None
        self._finish()
        return self.history

    # -- early stopping, command center --------------------------------------------------------
    def _early_stopping_step(self, record: dict) -> bool:
        """Track the best val_loss (with EMA: of the averaged weights); True when patience ran out."""
        if self.early_stopping is None:
            return False
        if self.best_record is None or record["val_loss"] < self.best_record["val_loss"] - self.min_delta:
            self.best_record = dict(record)
            weights = self.ema.averaged() if self.ema is not None else self.arena.xp.array(self.arena.data, copy=True)
            buffers = {id(m): {k: m.buffers[k].copy() for k in m.buffers}
                       for _, m in self.model.named_modules() if getattr(m, "buffers", None)}
            self._best_state = (weights, buffers)
            self._bad_epochs = 0
            return False
        self._bad_epochs += 1
        if self._bad_epochs < self.early_stopping:
            return False
        msg = (f"early stopping after epoch {self.epoch}: val_loss did not improve by more than {self.min_delta:g} "
               f"for {self.early_stopping} epochs; best epoch {self.best_record['epoch']} "
               f"(val_loss {self.best_record['val_loss']:.4f}, val_acc {self.best_record['val_acc']:.4f})")
        log.info(msg)
        self._log_metrics({"event": "early_stop", "epoch": self.epoch, "best_epoch": self.best_record["epoch"],
                           "message": msg})
        return True

    def _restore_best(self) -> None:
        """Put the best epoch's weights and BN statistics back (the run's result)."""
        weights, buffers = self._best_state
        self.arena.data[...] = weights
        for _, m in self.model.named_modules():
            for k, v in buffers.get(id(m), {}).items():
                m.buffers[k] = v.copy()
        self._log_metrics({"event": "restored_best", "epoch": self.best_record["epoch"],
                           "val_loss": self.best_record["val_loss"], "val_acc": self.best_record["val_acc"]})

    def _report_monitor(self) -> None:
        if self.monitor is None:
            return
        summary = self.monitor.summary()
        self._log_metrics(summary)
        if summary.get("samples"):
            log.info(Monitor.format_summary(summary))

    def _finish(self) -> None:
        if self.plot and self.run_dir is not None and self.history.steps:
            from .plots import plot_learning_curves

            plot_learning_curves(self.history, self._path("learning_curve.png"))
