"""One run of ``fit``: its options (``FitConfig``), its progress, and the named steps the driver calls —
train an epoch's accumulation windows, close the epoch (validate, keep the best weights, step an epoch
schedule, decide whether to stop), checkpoint, and put the best weights back at the end."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from gradpilot import _validate
from gradpilot.errors import GradpilotError, describe
from gradpilot.schedules import builders as schedules
from gradpilot.train import checkpoint as _checkpoint
from gradpilot.train import fingerprint as _fingerprint
from gradpilot.train.accumulation import NumItems, item_counter, optimizer_step, sync_contexts, windows
from gradpilot.train.batches import LossFn, StepFn
from gradpilot.train.distributed import comm_device, world
from gradpilot.train.early_stopping import EarlyStopping
from gradpilot.train.evaluation import Metric, evaluate_both
from gradpilot.train.metrics_log import MetricsLog, metric_column
from gradpilot.train.monitor import Monitor, steer
from gradpilot.train.precision import check as check_precision
from gradpilot.train.precision import scaler_for
from gradpilot.train.state import Snapshot, model_state

log = logging.getLogger("gradpilot.train.fitting")


@dataclass(frozen=True)
class FitConfig:
    """``fit``'s options, checked when made: bad numbers, a frozen model or a folder that cannot be written
    are refused here, before any training. ``fit`` builds one from its arguments.

    ``accumulation_steps`` micro-batches make one optimizer step, each weighted by its items (``num_items``
    counts them where gradpilot cannot). ``scheduler_options`` go to a named scheduler. ``metric(outputs,
    targets)`` is averaged over ``val_loader`` each epoch (the loss when None; ``higher_is_better`` gives its
    direction) and drives ``early_stopping``, which restores the best epoch's weights. ``checkpoint_dir``
    saves every epoch and every ``checkpoint_every`` steps. ``step_fn(model, batch) -> loss`` replaces the
    forward; ``max_grad_norm`` clips; ``device`` receives each batch; ``on_step(step, lr)`` follows each step.
    A ``Monitor`` raises findings; with ``autopilot=True`` fit acts on them (lower the LR on oscillation,
    roll back and lower it on divergence or NaN, stop and restore the best weights on overfitting).
    """

    optimizer: torch.optim.Optimizer
    loss_fn: LossFn | None
    train_loader: Iterable[Any]
    epochs: int
    accumulation_steps: int = 1
    scheduler: str | Any | None = None
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    val_loader: Iterable[Any] | None = None
    metric: Metric | None = None
    higher_is_better: bool = False
    early_stopping: EarlyStopping | None = None
    checkpoint_dir: str | Path | None = None
    checkpoint_every: int | None = None
    num_items: NumItems | None = None
    step_fn: StepFn | None = None
    max_grad_norm: float | None = None
    device: str | torch.device | None = None
    on_step: Callable[[int, float], None] | None = None
    monitor: Monitor | None = None
    precision: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.optimizer, torch.optim.Optimizer) or self.train_loader is None:
            raise GradpilotError("fit needs an optimizer (a torch.optim.Optimizer) and a train_loader, or a "
                                 "gradpilot.Task")
        _validate.positive_int("epochs", self.epochs)
        _validate.positive_int("accumulation_steps", self.accumulation_steps)
        if self.checkpoint_every is not None:
            _validate.positive_int("checkpoint_every", self.checkpoint_every)
        if self.max_grad_norm is not None:
            _validate.positive_float("max_grad_norm", self.max_grad_norm)
        if self.val_loader is not None and _length("val_loader", self.val_loader, required=False) == 0:
            raise GradpilotError("val_loader yields no batches: check the validation dataset is not empty")
        if self.val_loader is None and (self.early_stopping is not None or self.scheduler == "plateau"):
            raise GradpilotError("early stopping and the plateau scheduler watch the validation metric: "
                                 "pass val_loader")
        if self.checkpoint_dir is not None:
            _validate.writable_folder(Path(self.checkpoint_dir), "checkpoint_dir")
        if self.precision is not None:
            check_precision(self.precision)

    @property
    def mode(self) -> Literal["min", "max"]:
        """The direction of the validation metric."""
        return "max" if self.higher_is_better else "min"


@dataclass(frozen=True)
class _Setup:
    """A run's options and what follows from them: the model to step, the schedule, the device, the
    fingerprint a checkpoint must match."""

    cfg: FitConfig
    model: nn.Module  # the user's model (unwrapped)
    train_model: nn.Module  # what the forward runs through (DDP-wrapped under data parallel)
    schedule: schedules.Schedule | None
    device: torch.device
    checkpoint_dir: Path | None
    fingerprint: dict[str, Any]
    effective_batch_size: int


@dataclass
class _Run:
    """The loop's progress: everything a checkpoint must carry besides model, optimizer and scheduler."""

    epoch: int = 0
    windows_done: int = 0
    step: int = 0
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    val: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    epoch_steps: list[int] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    stop_reason: str | None = None


def _length(name: str, loader: Any, required: bool = True) -> int | None:
    try:
        n = len(loader)
    except TypeError:
        if required:
            raise GradpilotError(f"{name} has no len(): fit needs to know how many batches an epoch holds") from None
        return None
    if n == 0 and required:
        raise GradpilotError(f"{name} yields no batches: check the dataset is not empty "
                             "and that drop_last does not drop its only batch")
    return n


class _Loop:
    """One run of ``fit``: its setup, its progress, and the steps the driver calls in turn."""

    def __init__(self, setup: _Setup) -> None:
        self.s = setup
        self.run = _Run()
        self.resume: dict[str, Any] | None = None
        self.resumed_from: int | None = None
        cfg = setup.cfg
        self.count = item_counter(cfg.loss_fn, cfg.num_items)
        self.precision = check_precision(cfg.precision or "fp32")
        self.scaler = scaler_for(setup.device, self.precision)
        self.sync_context = sync_contexts(setup.train_model)
        self.world, self.rank = world()
        self.autopilot = cfg.monitor is not None and cfg.monitor.autopilot
        self.keep_best = cfg.early_stopping is not None or self.autopilot
        self.good = Snapshot()
        self.epoch_rng: dict[str, Any] = {}
        self.epoch_losses: list[torch.Tensor] = []
        name = getattr(cfg.metric, "__name__", None)
        column = None if cfg.metric is None else metric_column(None if str(name).startswith("<") else name,
                                                               cfg.mode == "max")
        self.log = None if setup.checkpoint_dir is None else MetricsLog(setup.checkpoint_dir, column)

    def start(self) -> None:
        """Continue from the checkpoint in ``checkpoint_dir`` if there is one (with the same settings)."""
        s = self.s
        if s.checkpoint_dir is not None:
            _checkpoint.remove_stale_temporaries(s.checkpoint_dir)
            self.resume = _checkpoint.load(s.checkpoint_dir)
        if self.resume is not None:
            _fingerprint.check_same(self.resume["fingerprint"], s.fingerprint, what=f"{s.checkpoint_dir} holds a run",
                                    remedy="use a new checkpoint_dir, or the same arguments to continue it")
            self.run = _restore(self.resume, s.model, s.cfg.optimizer, s.schedule)
            self.resumed_from = self.run.step
            self._write_log(rewrite=True, partial=self.resume["epoch_losses"])
            log.info("resuming from %s at epoch %d, step %d", s.checkpoint_dir, self.run.epoch + 1, self.run.step)
        if self.autopilot:
            self.good.take(self.run.step, s.model, s.cfg.optimizer)
        s.model.train()

    def train_epoch(self) -> None:
        """Train one epoch's accumulation windows; on resume mid-epoch, replay its shuffle and skip what was done."""
        s, run, skip = self.s, self.run, 0
        self.epoch_losses = []
        if self.resume is not None and run.windows_done:
            self.epoch_rng, skip = self.resume["epoch_rng"], run.windows_done
            _checkpoint.set_rng_state(self.epoch_rng, s.cfg.train_loader)
            self.epoch_losses = [torch.tensor(v) for v in self.resume["epoch_losses"]]
        else:
            if self.resume is not None:
                _checkpoint.set_rng_state(self.resume["rng"], s.cfg.train_loader)
            self.epoch_rng = _checkpoint.rng_state(s.cfg.train_loader)
        for w, window in enumerate(windows(s.cfg.train_loader, s.cfg.accumulation_steps)):
            if w < skip:
                if w == skip - 1 and self.resume is not None:
                    _checkpoint.set_rng_state(self.resume["rng"], s.cfg.train_loader)
                continue
            self.epoch_losses.append(self.train_window(window))
            run.windows_done = w + 1
            self.after_step()
        self.resume = None

    def train_window(self, window: list[Any]) -> torch.Tensor:
        """One optimizer step over a window of micro-batches: accumulate, clip, step, zero, schedule."""
        s = self.s
        self.run.lrs.append(s.cfg.optimizer.param_groups[0]["lr"])
        loss = optimizer_step(s.train_model, s.cfg.optimizer, window, s.cfg.loss_fn, s.cfg.step_fn, s.device,
                              self.count, max_grad_norm=s.cfg.max_grad_norm, world_size=self.world,
                              sync_context=self.sync_context, precision=self.precision,
                              scaler=self.scaler)  # DDP: one all-reduce a window
        if s.schedule is not None and s.schedule.interval == "step":
            s.schedule.step()
        return loss

    def after_step(self) -> None:
        """Count the step, tell the callback and the monitor, checkpoint when due."""
        s, run = self.s, self.run
        run.step += 1
        if s.cfg.on_step is not None:
            s.cfg.on_step(run.step, run.lrs[-1])
        if s.cfg.monitor is not None:
            new = s.cfg.monitor.update(run.step, self.epoch_losses[-1], run.lrs[-1])
            if self.autopilot:
                steer(new, s.cfg.monitor, self.good, run.step, s.model, s.cfg.optimizer, s.schedule)
        if s.cfg.checkpoint_every is not None and run.step % s.cfg.checkpoint_every == 0:
            self.checkpoint()

    def end_epoch(self) -> None:
        """Validate, keep the best weights, step an epoch schedule, decide whether to stop, checkpoint."""
        s, run = self.s, self.run
        run.losses.extend(_gather_losses(self.epoch_losses, self.world))
        self.epoch_losses = []
        run.epoch += 1
        run.windows_done = 0
        run.epoch_steps.append(run.step)
        value = self.validate() if s.cfg.val_loader is not None else None
        if s.schedule is not None and s.schedule.interval == "epoch":
            s.schedule.step(value)
        run.stop_reason = self.stop_reason()
        self.checkpoint()

    def validate(self) -> float:
        s, run = self.s, self.run
        cfg = s.cfg
        val_loss, val_metric = evaluate_both(s.model, cfg.val_loader or [], cfg.loss_fn, cfg.metric,
                                             step_fn=cfg.step_fn, num_items=cfg.num_items, device=s.device)
        value = val_loss if val_metric is None else val_metric
        run.val.append(value)
        run.val_losses.append(val_loss)
        log.info("epoch %d: validation %s %.5g", run.epoch, "metric" if s.cfg.metric else "loss", value)
        best = (cfg.early_stopping or EarlyStopping()).best_epoch(run.val, cfg.mode)
        if self.keep_best and best == len(run.val) - 1:
            run.best_state = model_state(s.model)
        return value

    def stop_reason(self) -> str | None:
        """Why the run ends after this epoch, or None to go on."""
        s, run = self.s, self.run
        if s.cfg.monitor is not None and s.cfg.val_loader is not None:
            overfit = s.cfg.monitor.end_epoch(run.step, run.val_losses[-1])
            if self.autopilot and overfit:
                s.cfg.monitor.record(run.step, "overfitting", f"stopped after epoch {run.epoch}: {overfit[0].evidence}")
                return f"autopilot stopped at epoch {run.epoch}: overfitting"
        if s.cfg.early_stopping is not None and s.cfg.early_stopping.should_stop(run.val, s.cfg.mode):
            best = s.cfg.early_stopping.best_epoch(run.val, s.cfg.mode)
            if best is None:
                return f"early stopping at epoch {run.epoch}: validation metric not finite"
            return (f"early stopping at epoch {run.epoch}: no improvement in the validation metric for "
                    f"{s.cfg.early_stopping.patience} epochs (best {run.val[best]:.5g} at epoch {best + 1})")
        return f"completed {s.cfg.epochs} epochs" if run.epoch >= s.cfg.epochs else None

    def checkpoint(self) -> None:
        """Write the metrics log, then the checkpoint (rank 0 only); a restart rewrites the log from the checkpoint."""
        s = self.s
        if s.checkpoint_dir is None or self.rank != 0:
            return
        partial = _gather_losses(self.epoch_losses, 1)
        self._write_log(partial=partial)
        state = _snapshot(self.run, s, self.epoch_rng, partial)
        _checkpoint.save(state, s.checkpoint_dir)

    def _write_log(self, *, partial: list[float], rewrite: bool = False) -> None:
        if self.log is not None and self.rank == 0:
            run = self.run
            self.log.write(run.losses + partial, run.lrs, run.epoch_steps, run.val_losses,
                           run.val if self.s.cfg.metric is not None else [], rewrite=rewrite)

    def finish(self) -> bool:
        """Put the best weights back when the run kept them; True when it did."""
        restored = self.keep_best and self.run.best_state is not None
        if restored and self.run.best_state is not None:
            self.s.model.load_state_dict(self.run.best_state)
        return restored


def _gather_losses(losses: list[torch.Tensor], world_size: int) -> list[float]:
    """One host sync per epoch (not per step); under DDP the processes' shares are summed to the global mean."""
    if not losses:
        return []
    stacked = torch.stack([loss.double().reshape(()) for loss in losses])
    if world_size > 1:
        stacked = stacked.to(comm_device())
        dist.all_reduce(stacked)
        stacked = stacked / world_size
    return list(stacked.tolist())


def _snapshot(run: _Run, s: _Setup, epoch_rng: dict[str, Any], partial: list[float]) -> dict[str, Any]:
    return {
        "fingerprint": s.fingerprint, "epoch": run.epoch, "windows_done": run.windows_done, "step": run.step,
        "losses": list(run.losses), "lrs": list(run.lrs), "val": list(run.val), "val_losses": list(run.val_losses),
        "epoch_steps": list(run.epoch_steps), "best_state": run.best_state, "stop_reason": run.stop_reason,
        "model": s.model.state_dict(), "optimizer": s.cfg.optimizer.state_dict(),
        "scheduler": None if s.schedule is None else s.schedule.scheduler.state_dict(),
        "epoch_rng": epoch_rng, "rng": _checkpoint.rng_state(s.cfg.train_loader), "epoch_losses": partial,
    }


def _restore(saved: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
             schedule: schedules.Schedule | None) -> _Run:
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if schedule is not None and saved["scheduler"] is not None:
            schedule.scheduler.load_state_dict(saved["scheduler"])
        return _Run(epoch=saved["epoch"], windows_done=saved["windows_done"], step=saved["step"],
                    losses=saved["losses"], lrs=saved["lrs"], val=saved["val"], val_losses=saved["val_losses"],
                    epoch_steps=saved["epoch_steps"], best_state=saved["best_state"], stop_reason=saved["stop_reason"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise GradpilotError(f"the checkpoint does not fit this run ({describe(exc, 160)}); "
                             "use a new checkpoint_dir") from None
