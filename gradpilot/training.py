"""``fit``: the training loop every gradpilot recommendation runs in, with exact accumulation and resume.

``fit`` is a driver: check the arguments, start (or resume) a run, then epoch after epoch train its
accumulation windows and close the epoch (validate, keep the best weights, step the schedule, decide whether
to stop, checkpoint). Each of those is a named step below.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gradpilot import _checkpoint, _fingerprint, _validate, schedules
from gradpilot._batch import LossFn, StepFn, model_device
from gradpilot._metrics_log import MetricsLog, metric_column
from gradpilot.accumulation import NumItems, accumulate, comm_device, item_counter, sync_contexts, windows
from gradpilot.early_stopping import EarlyStopping
from gradpilot.errors import GradpilotError
from gradpilot.evaluation import Metric, evaluate, evaluate_both, world
from gradpilot._state import Snapshot, model_state
from gradpilot.monitor import Monitor
from gradpilot.task import Task

__all__ = ["FitResult", "evaluate", "evaluate_both", "fit"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitResult:
    """What a run did: per-step loss and LR, per-epoch validation metric, best epoch and why it stopped.

    Epochs are counted from 1. ``train_losses[i]`` is the item-weighted mean loss of optimizer step ``i``.
    """

    train_losses: tuple[float, ...]
    lrs: tuple[float, ...]
    val_metrics: tuple[float, ...]
    best_epoch: int | None
    stop_reason: str
    epochs_completed: int
    steps: int
    effective_batch_size: int
    val_losses: tuple[float, ...] = ()
    epoch_steps: tuple[int, ...] = ()
    resumed_from_step: int | None = None
    restored_best: bool = False
    findings: tuple[Any, ...] = ()  # what a Monitor raised while training (gradpilot.diagnose.Finding)
    actions: tuple[Any, ...] = ()  # what its autopilot did (gradpilot.monitor.Action)

    @property
    def best_metric(self) -> float | None:
        """The validation metric at the best epoch."""
        return None if self.best_epoch is None else self.val_metrics[self.best_epoch - 1]


@dataclass(frozen=True)
class _Setup:
    """Everything a run needs, checked once before any work."""

    model: nn.Module  # the user's model (unwrapped)
    train_model: nn.Module  # what the forward runs through (DDP-wrapped under data parallel)
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn | None
    train_loader: Iterable[Any]
    val_loader: Iterable[Any] | None
    metric: Metric | None
    mode: str
    epochs: int
    accumulation_steps: int
    checkpoint_every: int | None
    max_grad_norm: float | None
    early_stopping: EarlyStopping | None
    schedule: schedules.Schedule | None
    device: torch.device
    step_fn: StepFn | None
    num_items: NumItems | None
    on_step: Callable[[int, float], None] | None
    monitor: Monitor | None
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


def fit(
    model: nn.Module | Task,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: LossFn | None = None,
    train_loader: Iterable[Any] | None = None,
    *,
    epochs: int | None = None,
    accumulation_steps: int = 1,
    scheduler: str | Any | None = None,
    scheduler_options: dict[str, Any] | None = None,
    val_loader: Iterable[Any] | None = None,
    metric: Metric | None = None,
    higher_is_better: bool = False,
    early_stopping: EarlyStopping | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    num_items: NumItems | None = None,
    step_fn: StepFn | None = None,
    max_grad_norm: float | None = None,
    device: str | torch.device | None = None,
    on_step: Callable[[int, float], None] | None = None,
    monitor: Monitor | None = None,
) -> FitResult:
    """Train for ``epochs`` with exact gradient accumulation, a schedule, validation, early stopping and resume.

    ``model`` may be a ``gradpilot.Task``, which supplies the optimizer, loss, loaders, metric and epochs
    (each argument given here wins). ``scheduler`` is a name from ``schedules.BUILDERS`` (options in
    ``scheduler_options``) or a torch scheduler. With ``checkpoint_dir`` the run saves every epoch (and every
    ``checkpoint_every`` optimizer steps) with a ``metrics.csv`` log beside it, and a run started again with
    the same arguments continues where the last checkpoint left off (other arguments are refused).
    ``on_step(step, lr)`` is called after every optimizer step. A ``Monitor`` watches the run and raises
    findings; with ``autopilot=True`` fit acts on them (lower the LR on oscillation, roll back to the last
    good state and lower it on divergence or NaN, stop and restore the best weights on overfitting).
    """
    args = dict(optimizer=optimizer, loss_fn=loss_fn, train_loader=train_loader, epochs=epochs,
                val_loader=val_loader, metric=metric, higher_is_better=higher_is_better)
    if isinstance(model, Task):
        model, args = model.model, _task_defaults(model, args)
    setup = _setup(model, args, accumulation_steps=accumulation_steps, scheduler=scheduler,
                   scheduler_options=scheduler_options or {}, early_stopping=early_stopping,
                   checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, num_items=num_items,
                   step_fn=step_fn, max_grad_norm=max_grad_norm, device=device, on_step=on_step, monitor=monitor)
    loop = _Loop(setup)
    loop.start()
    while loop.run.epoch < setup.epochs and loop.run.stop_reason is None:
        loop.train_epoch()
        loop.end_epoch()
    return loop.finish()


def _task_defaults(task: Task, args: dict[str, Any]) -> dict[str, Any]:
    """A task's own optimizer, loss, loaders, metric and epochs, for each argument left as None."""
    out = dict(args)
    out["optimizer"] = args["optimizer"] if args["optimizer"] is not None else task.make_optimizer()
    out["loss_fn"] = args["loss_fn"] if args["loss_fn"] is not None else task.loss_fn
    out["train_loader"] = args["train_loader"] if args["train_loader"] is not None else task.train_loader()
    out["val_loader"] = args["val_loader"] if args["val_loader"] is not None else task.val_loader()
    if args["metric"] is None:
        out["metric"], out["higher_is_better"] = task.metric, task.higher_is_better
    out["epochs"] = args["epochs"] if args["epochs"] is not None else task.epochs
    return out


def _setup(model: nn.Module, args: dict[str, Any], **opts: Any) -> _Setup:
    """Check every argument and every output path, build the schedule and the run's fingerprint."""
    optimizer, train_loader, val_loader = args["optimizer"], args["train_loader"], args["val_loader"]
    if not isinstance(model, nn.Module):
        raise GradpilotError(f"model must be a torch.nn.Module or a gradpilot.Task, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer) or train_loader is None:
        raise GradpilotError("fit needs an optimizer (a torch.optim.Optimizer) and a train_loader, or a gradpilot.Task")
    epochs = _validate.positive_int("epochs", args["epochs"])
    accumulation = _validate.positive_int("accumulation_steps", opts["accumulation_steps"])
    every = None if opts["checkpoint_every"] is None else _validate.positive_int("checkpoint_every", opts["checkpoint_every"])
    clip = None if opts["max_grad_norm"] is None else _validate.positive_float("max_grad_norm", opts["max_grad_norm"])
    base = model.module if isinstance(model, DistributedDataParallel) else model
    _check_optimizer_trains(base, optimizer)
    batches = _length("train_loader", train_loader)
    if val_loader is not None and _length("val_loader", val_loader, required=False) == 0:
        raise GradpilotError("val_loader yields no batches: check the validation dataset is not empty")
    if val_loader is None and (opts["early_stopping"] is not None or opts["scheduler"] == "plateau"):
        raise GradpilotError("early stopping and the plateau scheduler watch the validation metric: pass val_loader")
    ckpt = None if opts["checkpoint_dir"] is None else _validate.writable_folder(Path(opts["checkpoint_dir"]),
                                                                                 "checkpoint_dir")
    world_size, _ = world()
    steps_per_epoch = math.ceil(batches / accumulation)
    mode = "max" if args["higher_is_better"] else "min"
    fingerprint = {"epochs": epochs, "accumulation_steps": accumulation, "batches_per_epoch": batches,
                   "scheduler": repr((opts["scheduler"] if isinstance(opts["scheduler"], str) or opts["scheduler"] is None
                                      else type(opts["scheduler"]).__name__, sorted(opts["scheduler_options"].items()))),
                   "world_size": world_size, "max_grad_norm": clip, "early_stopping": repr(opts["early_stopping"]),
                   "model": _fingerprint.model_layout(base), "train_data": _fingerprint.data_digest(train_loader),
                   **_fingerprint.optimizer_settings(optimizer)}  # before a scheduler touches the LRs
    schedule = _make_schedule(opts["scheduler"], opts["scheduler_options"], optimizer, steps_per_epoch * epochs, mode)
    train_model = model if world_size == 1 or isinstance(model, DistributedDataParallel) else DistributedDataParallel(model)
    device = torch.device(opts["device"]) if opts["device"] is not None else model_device(base)
    return _Setup(base, train_model, optimizer, args["loss_fn"], train_loader, val_loader, args["metric"], mode, epochs,
                  accumulation, every, clip, opts["early_stopping"], schedule, device, opts["step_fn"], opts["num_items"],
                  opts["on_step"], opts["monitor"], ckpt, fingerprint,
                  _effective_batch(train_loader, steps_per_epoch, accumulation, world_size))


def _check_optimizer_trains(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    own = {id(p) for p in model.parameters()}
    params = [p for g in optimizer.param_groups for p in g["params"] if id(p) in own]
    if not params:
        raise GradpilotError("the optimizer holds none of the model's parameters: build it from model.parameters()")
    if not any(p.requires_grad for p in params):
        raise GradpilotError("none of the model's parameters the optimizer holds requires grad (a frozen model): "
                             "unfreeze what should train")


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


def _effective_batch(loader: Any, steps_per_epoch: int, accumulation: int, world_size: int) -> int:
    """Items per optimizer step: micro-batch × accumulation × processes, or, when batches have no fixed size
    (a batch sampler that buckets by length), the dataset's items over the epoch's optimizer steps."""
    size = getattr(loader, "batch_size", None) or getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    if size:
        return int(size) * accumulation * world_size
    try:
        return max(1, round(len(loader.dataset) / steps_per_epoch))
    except (AttributeError, TypeError):
        return 0  # unknown: an iterable loader of ready batches


def _make_schedule(scheduler: Any, options: dict[str, Any], optimizer: torch.optim.Optimizer, total_steps: int,
                   mode: str) -> schedules.Schedule | None:
    if scheduler is None:
        if options:
            raise GradpilotError("scheduler_options given without a scheduler name")
        return None
    if isinstance(scheduler, str):
        if scheduler == "plateau":
            options = {"mode": mode, **options}
        return schedules.make_schedule(scheduler, optimizer, total_steps=total_steps, **options)
    return schedules.wrap(scheduler)


class _Loop:
    """One run of ``fit``: its setup, its progress, and the steps the driver calls in turn."""

    def __init__(self, setup: _Setup) -> None:
        self.s = setup
        self.run = _Run()
        self.resume: dict[str, Any] | None = None
        self.resumed_from: int | None = None
        self.count = item_counter(setup.loss_fn, setup.num_items)
        self.sync_context = sync_contexts(setup.train_model)
        self.world, self.rank = world()
        self.autopilot = setup.monitor is not None and setup.monitor.autopilot
        self.keep_best = setup.early_stopping is not None or self.autopilot
        self.good = Snapshot()
        self.epoch_rng: dict[str, Any] = {}
        self.epoch_losses: list[torch.Tensor] = []
        name = getattr(setup.metric, "__name__", None)
        column = None if setup.metric is None else metric_column(None if str(name).startswith("<") else name,
                                                                 setup.mode == "max")
        self.log = None if setup.checkpoint_dir is None else MetricsLog(setup.checkpoint_dir, column)

    def start(self) -> None:
        """Continue from the checkpoint in ``checkpoint_dir`` if there is one (with the same settings)."""
        s = self.s
        if s.checkpoint_dir is not None:
            _checkpoint.remove_stale_temporaries(s.checkpoint_dir)
            self.resume = _checkpoint.load(s.checkpoint_dir)
        if self.resume is not None:
            _fingerprint.check_same(self.resume["fingerprint"], s.fingerprint, str(s.checkpoint_dir))
            self.run = _restore(self.resume, s.model, s.optimizer, s.schedule)
            self.resumed_from = self.run.step
            self._write_log(rewrite=True, partial=self.resume["epoch_losses"])
            log.info("resuming from %s at epoch %d, step %d", s.checkpoint_dir, self.run.epoch + 1, self.run.step)
        if self.autopilot:
            self.good.take(self.run.step, s.model, s.optimizer)
        s.model.train()

    def train_epoch(self) -> None:
        """Train one epoch's accumulation windows; on resume mid-epoch, replay its shuffle and skip what was done."""
        s, run, skip = self.s, self.run, 0
        self.epoch_losses = []
        if self.resume is not None and run.windows_done:
            self.epoch_rng, skip = self.resume["epoch_rng"], run.windows_done
            _checkpoint.set_rng_state(self.epoch_rng, s.train_loader)
            self.epoch_losses = [torch.tensor(v) for v in self.resume["epoch_losses"]]
        else:
            if self.resume is not None:
                _checkpoint.set_rng_state(self.resume["rng"], s.train_loader)
            self.epoch_rng = _checkpoint.rng_state(s.train_loader)
        for w, window in enumerate(windows(s.train_loader, s.accumulation_steps)):
            if w < skip:
                if w == skip - 1 and self.resume is not None:
                    _checkpoint.set_rng_state(self.resume["rng"], s.train_loader)
                continue
            self.epoch_losses.append(self.train_window(window))
            run.windows_done = w + 1
            self.after_step()
        self.resume = None

    def train_window(self, window: list[Any]) -> torch.Tensor:
        """One optimizer step over a window of micro-batches: accumulate, clip, step, zero, schedule."""
        s = self.s
        loss = accumulate(s.train_model, window, s.loss_fn, s.step_fn, s.device, self.count, world_size=self.world,
                          sync_context=self.sync_context)  # DDP all-reduces on the window's last micro-batch only
        if s.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(s.model.parameters(), s.max_grad_norm)
        self.run.lrs.append(s.optimizer.param_groups[0]["lr"])
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        if s.schedule is not None and s.schedule.interval == "step":
            s.schedule.step()
        return loss

    def after_step(self) -> None:
        """Count the step, tell the callback and the monitor, checkpoint when due."""
        s, run = self.s, self.run
        run.step += 1
        if s.on_step is not None:
            s.on_step(run.step, run.lrs[-1])
        if s.monitor is not None:
            new = s.monitor.update(run.step, self.epoch_losses[-1], run.lrs[-1])
            if self.autopilot:
                _steer(new, s.monitor, self.good, run.step, s.model, s.optimizer, s.schedule)
        if s.checkpoint_every is not None and run.step % s.checkpoint_every == 0:
            self.checkpoint()

    def end_epoch(self) -> None:
        """Validate, keep the best weights, step an epoch schedule, decide whether to stop, checkpoint."""
        s, run = self.s, self.run
        run.losses.extend(_gather_losses(self.epoch_losses, self.world))
        self.epoch_losses = []
        run.epoch += 1
        run.windows_done = 0
        run.epoch_steps.append(run.step)
        value = self.validate() if s.val_loader is not None else None
        if s.schedule is not None and s.schedule.interval == "epoch":
            s.schedule.step(value)
        run.stop_reason = self.stop_reason()
        self.checkpoint()

    def validate(self) -> float:
        s, run = self.s, self.run
        val_loss, val_metric = evaluate_both(s.model, s.val_loader or [], s.loss_fn, s.metric, step_fn=s.step_fn,
                                             num_items=s.num_items, device=s.device)
        value = val_loss if val_metric is None else val_metric
        run.val.append(value)
        run.val_losses.append(val_loss)
        log.info("epoch %d: validation %s %.5g", run.epoch, "metric" if s.metric else "loss", value)
        if self.keep_best and (s.early_stopping or EarlyStopping()).best_epoch(run.val, s.mode) == len(run.val) - 1:
            run.best_state = model_state(s.model)
        return value

    def stop_reason(self) -> str | None:
        """Why the run ends after this epoch, or None to go on."""
        s, run = self.s, self.run
        if s.monitor is not None and s.val_loader is not None:
            overfit = s.monitor.end_epoch(run.step, run.val_losses[-1])
            if self.autopilot and overfit:
                s.monitor.record(run.step, "overfitting", f"stopped after epoch {run.epoch}: {overfit[0].evidence}")
                return f"autopilot stopped at epoch {run.epoch}: overfitting"
        if s.early_stopping is not None and s.early_stopping.should_stop(run.val, s.mode):
            best = s.early_stopping.best_epoch(run.val, s.mode)
            if best is None:
                return f"early stopping at epoch {run.epoch}: validation metric not finite"
            return (f"early stopping at epoch {run.epoch}: no improvement in the validation metric for "
                    f"{s.early_stopping.patience} epochs (best {run.val[best]:.5g} at epoch {best + 1})")
        return f"completed {s.epochs} epochs" if run.epoch >= s.epochs else None

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
                           run.val if self.s.metric is not None else [], rewrite=rewrite)

    def finish(self) -> FitResult:
        """Put the best weights back when the run kept them, and report."""
        s, run = self.s, self.run
        restored = self.keep_best and run.best_state is not None
        if restored:
            s.model.load_state_dict(run.best_state)  # type: ignore[arg-type]
        best_index = (s.early_stopping or EarlyStopping()).best_epoch(run.val, s.mode) if run.val else None
        monitor = s.monitor
        return FitResult(
            train_losses=tuple(run.losses), lrs=tuple(run.lrs), val_metrics=tuple(run.val),
            best_epoch=None if best_index is None else best_index + 1,
            stop_reason=run.stop_reason or f"completed {s.epochs} epochs", epochs_completed=run.epoch, steps=run.step,
            effective_batch_size=s.effective_batch_size, val_losses=tuple(run.val_losses),
            epoch_steps=tuple(run.epoch_steps), resumed_from_step=self.resumed_from, restored_best=restored,
            findings=tuple(monitor.findings) if monitor else (), actions=tuple(monitor.actions) if monitor else (),
        )


def _steer(new: list[Any], monitor: Monitor, good: Snapshot, step: int, model: nn.Module,
           optimizer: torch.optim.Optimizer, schedule: schedules.Schedule | None) -> None:
    """The autopilot: act on new findings; after a clean check, remember the state as good."""
    checked = len(monitor.steps) % monitor.check_every == 0
    for finding in new:
        if finding.kind in ("nan", "divergence"):
            back = good.step
            restored = good.restore(model, optimizer)
            before, after = schedules.multiply_lr(optimizer, schedule, monitor.lr_factor_divergence)
            where = f"rolled back to step {back}" if restored else "no good state to roll back to"
            monitor.record(step, finding.kind, f"{finding.kind}: {where}, lr {before:.3g} → {after:.3g}")
            return
        if finding.kind == "oscillation":
            before, after = schedules.multiply_lr(optimizer, schedule, monitor.lr_factor_oscillation)
            monitor.record(step, finding.kind, f"oscillation: lr {before:.3g} → {after:.3g}")
    if checked and not new:
        good.take(step, model, optimizer)


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
        "model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
        "scheduler": None if s.schedule is None else s.schedule.scheduler.state_dict(),
        "epoch_rng": epoch_rng, "rng": _checkpoint.rng_state(s.train_loader), "epoch_losses": partial,
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
        raise GradpilotError(f"the checkpoint does not fit this run ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:160]}); use a new checkpoint_dir") from None
