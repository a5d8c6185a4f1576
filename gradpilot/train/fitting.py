"""``fit``: the training loop every gradpilot recommendation runs in, with exact accumulation and resume.

``fit`` is a driver: check the options (``FitConfig``), work out what follows from them (``_setup``), start or
resume the run, then epoch after epoch train its accumulation windows and close the epoch. The steps live in
``gradpilot.train._loop``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gradpilot.errors import GradpilotError
from gradpilot.schedules import builders as schedules
from gradpilot.train import fingerprint as _fingerprint
from gradpilot.train._loop import FitConfig, _length, _Loop, _Setup
from gradpilot.train.accumulation import NumItems
from gradpilot.train.batches import LossFn, StepFn, check_trains, model_device
from gradpilot.train.distributed import world
from gradpilot.train.early_stopping import EarlyStopping
from gradpilot.train.evaluation import Metric, evaluate, evaluate_both
from gradpilot.train.monitor import Monitor
from gradpilot.train.task import Task

__all__ = ["FitConfig", "FitResult", "evaluate", "evaluate_both", "fit"]


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
    findings: tuple[Any, ...] = ()  # what a Monitor raised while training (gradpilot.diagnosis.detectors.Finding)
    actions: tuple[Any, ...] = ()  # what its autopilot did (gradpilot.train.monitor.Action)

    @property
    def best_metric(self) -> float | None:
        """The validation metric at the best epoch."""
        return None if self.best_epoch is None else self.val_metrics[self.best_epoch - 1]


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
    precision: str | None = None,
) -> FitResult:
    """Train for ``epochs`` with exact gradient accumulation, a schedule, validation, early stopping and resume.

    A ``gradpilot.Task`` as ``model`` fills in what is None here. ``scheduler``: a name from
    ``schedules.BUILDERS`` or a torch scheduler. With ``checkpoint_dir`` the same call again continues the run
    (other settings are refused) and ``metrics.csv`` logs it. The options are ``FitConfig``'s.
    """
    options = {**locals(), "scheduler_options": scheduler_options or {}}
    net = options.pop("model")
    if isinstance(net, Task):
        options = _task_defaults(net, options)
        net = net.model
    loop = _Loop(_setup(net, FitConfig(**options)))
    loop.start()
    while loop.run.epoch < loop.s.cfg.epochs and loop.run.stop_reason is None:
        loop.train_epoch()
        loop.end_epoch()
    return _result(loop, restored=loop.finish())


def _result(loop: _Loop, *, restored: bool) -> FitResult:
    cfg, run, monitor = loop.s.cfg, loop.run, loop.s.cfg.monitor
    best_index = (cfg.early_stopping or EarlyStopping()).best_epoch(run.val, cfg.mode) if run.val else None
    return FitResult(
        train_losses=tuple(run.losses), lrs=tuple(run.lrs), val_metrics=tuple(run.val),
        best_epoch=None if best_index is None else best_index + 1,
        stop_reason=run.stop_reason or f"completed {cfg.epochs} epochs", epochs_completed=run.epoch, steps=run.step,
        effective_batch_size=loop.s.effective_batch_size, val_losses=tuple(run.val_losses),
        epoch_steps=tuple(run.epoch_steps), resumed_from_step=loop.resumed_from, restored_best=restored,
        findings=tuple(monitor.findings) if monitor else (), actions=tuple(monitor.actions) if monitor else (),
    )


def _task_defaults(task: Task, options: dict[str, Any]) -> dict[str, Any]:
    """A task's own optimizer, loss, loaders, metric and epochs, for each option left as None."""
    own: dict[str, Callable[[], Any]] = {
        "optimizer": task.make_optimizer, "loss_fn": lambda: task.loss_fn, "train_loader": task.train_loader,
        "val_loader": task.val_loader, "epochs": lambda: task.epochs, "step_fn": lambda: task.step_fn,
        "max_grad_norm": lambda: task.max_grad_norm, "precision": lambda: task.precision}
    out = {**options, **{k: make() for k, make in own.items() if options[k] is None}}
    if options["metric"] is None:
        out["metric"], out["higher_is_better"] = task.metric, task.higher_is_better
    return out


def _setup(model: nn.Module, cfg: FitConfig) -> _Setup:
    """What follows from the options: the model to step, the schedule, the device and the fingerprint."""
    if not isinstance(model, nn.Module):
        raise GradpilotError(f"model must be a torch.nn.Module or a gradpilot.Task, got {type(model).__name__}")
    base = model.module if isinstance(model, DistributedDataParallel) else model
    check_trains(base, cfg.optimizer)
    batches = _length("train_loader", cfg.train_loader) or 0
    world_size, _ = world()
    steps_per_epoch = math.ceil(batches / cfg.accumulation_steps)
    # what a checkpoint must match, read before a scheduler touches the LRs (only a checkpointed run needs it)
    fingerprint = _run_fingerprint(base, cfg, batches, world_size) if cfg.checkpoint_dir is not None else {}
    schedule = _make_schedule(cfg, steps_per_epoch * cfg.epochs)
    wrap = world_size > 1 and not isinstance(model, DistributedDataParallel)
    return _Setup(cfg, base, DistributedDataParallel(model) if wrap else model, schedule,
                  torch.device(cfg.device) if cfg.device is not None else model_device(base),
                  None if cfg.checkpoint_dir is None else Path(cfg.checkpoint_dir), fingerprint,
                  _effective_batch(cfg.train_loader, steps_per_epoch, cfg.accumulation_steps, world_size))


def _run_fingerprint(model: nn.Module, cfg: FitConfig, batches: int, world_size: int) -> dict[str, Any]:
    """The settings a checkpoint must match for a restart to continue it."""
    name = cfg.scheduler if isinstance(cfg.scheduler, str) or cfg.scheduler is None else type(cfg.scheduler).__name__
    return {"epochs": cfg.epochs, "accumulation_steps": cfg.accumulation_steps, "batches_per_epoch": batches,
            "scheduler": repr((name, sorted(cfg.scheduler_options.items()))), "world_size": world_size,
            "max_grad_norm": cfg.max_grad_norm, "early_stopping": repr(cfg.early_stopping),
            "precision": cfg.precision or "fp32",
            "model": _fingerprint.model_layout(model), "train_data": _fingerprint.data_digest(cfg.train_loader),
            **_fingerprint.optimizer_settings(cfg.optimizer)}


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


def _make_schedule(cfg: FitConfig, total_steps: int) -> schedules.Schedule | None:
    if cfg.scheduler is None:
        if cfg.scheduler_options:
            raise GradpilotError("scheduler_options given without a scheduler name")
        return None
    if isinstance(cfg.scheduler, str):
        options = {"mode": cfg.mode, **cfg.scheduler_options} if cfg.scheduler == "plateau" else cfg.scheduler_options
        return schedules.make_schedule(cfg.scheduler, cfg.optimizer, total_steps=total_steps, **options)
    return schedules.wrap(cfg.scheduler)


