"""``fit``: a driver over gradpilot's one engine (``run.LocalRun``) — the same steps, data order, LR mechanism
and checkpoint format tune and the probe train with. It checks the options (``FitConfig``), works out what
follows from them (``_setup``: the run), starts or resumes it, then epoch after epoch advances the run to the
epoch's end and closes the epoch: validate, keep the best weights, step an epoch schedule, decide whether to
stop, checkpoint.
"""

from __future__ import annotations

import logging
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
from gradpilot.train import checkpoint, fingerprint
from gradpilot.train.accumulation import NumItems, StepParts
from gradpilot.train.batches import LossFn, StepFn, check_trains, model_device
from gradpilot.train.data import Batches, FromLoader, SeededBatches, Shuffled
from gradpilot.train.distributed import world
from gradpilot.train.early_stopping import EarlyStopping
from gradpilot.train.evaluation import Metric, evaluate, evaluate_both
from gradpilot.train.fit_config import FitConfig
from gradpilot.train.metrics_log import MetricsLog, metric_column
from gradpilot.train.monitor import Monitor, steer
from gradpilot.train.precision import check as check_precision
from gradpilot.train.run import LocalRun, Validation
from gradpilot.train.seam import Setting
from gradpilot.train.state import Snapshot, model_state
from gradpilot.train.task import Task

__all__ = ["FitConfig", "FitResult", "evaluate", "evaluate_both", "fit"]
log = logging.getLogger("gradpilot.training")


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
    findings: tuple[Any, ...] = ()  # what a Monitor raised while training (gradpilot.diagnosis.Finding)
    actions: tuple[Any, ...] = ()  # what its autopilot did (gradpilot.train.monitor.Action)

    @property
    def best_metric(self) -> float | None:
        """The validation metric at the best epoch."""
        return None if self.best_epoch is None else self.val_metrics[self.best_epoch - 1]

    @property
    def metric(self) -> float:
        """The validation metric of the model ``fit`` leaves (the best epoch's where it restored it, else the
        last's): what tune calls a run's ``metric``."""
        if not self.val_metrics:
            return math.nan
        return self.val_metrics[self.best_epoch - 1] if self.restored_best and self.best_epoch else self.val_metrics[-1]


def fit(
    model: nn.Module | Task,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: LossFn | None = None,
    train_loader: Iterable[Any] | None = None,
    *,
    epochs: int | None = None,
    accumulation_steps: int | None = None,
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
    lr: float | None = None,
    plan: str | Path | dict[str, Any] | None = None,
    seed: int = 0,
) -> FitResult:
    """Train for ``epochs`` with exact gradient accumulation, a schedule, validation, early stopping and resume.

    A ``gradpilot.Task`` as ``model`` fills in what is None here — its optimizer at ``lr`` (default: the task's),
    its data in gradpilot's one order for ``seed``, its loss, metric and epochs — and may take a ``plan``
    (``plan.yaml`` from ``gradpilot tune``, or its dict in ``TrainingArguments`` names: LR, batch,
    accumulation, epochs and schedule), trained from the task's weights. ``scheduler``: a name from
    ``schedules.BUILDERS`` or a torch scheduler. With ``checkpoint_dir`` the same call again continues the run
    (other settings are refused) and ``metrics.csv`` logs it. The options are ``FitConfig``'s.
    """
    options = {k: v for k, v in locals().items() if k not in ("model", "lr", "plan", "seed")}
    options["scheduler_options"] = scheduler_options or {}
    if isinstance(model, Task):
        options = _task_options(model, options, lr=lr, plan=plan, seed=seed)
        model = model.model
    elif lr is not None or plan is not None:
        raise GradpilotError("lr= and plan= need a gradpilot.Task (its optimizer and data are made at them): with "
                             "your own optimizer, set its LR; with your own loader, its batch")
    if options["accumulation_steps"] is None:
        options["accumulation_steps"] = 1
    driver = _Fit(_setup(model, FitConfig(**options)))
    driver.start()
    while driver.going():
        driver.run.advance((driver.epochs_done + 1) * driver.run.steps_per_epoch)
        driver.end_epoch()
    return driver.result(restored=driver.finish())


def _task_options(task: Task, options: dict[str, Any], *, lr: float | None, plan: Any, seed: int) -> dict[str, Any]:
    """A task's own optimizer, loss, data, metric and epochs, for each option left as None; a plan's LR, batch,
    accumulation, epochs and schedule over them."""
    if plan is not None:
        from gradpilot.train.plan import plan_options

        return plan_options(task, plan, options, seed=seed, lr=lr)
    torch.manual_seed(seed)  # the same task and seed train the same run (dropout too)
    own: dict[str, Callable[[], Any]] = {
        "optimizer": lambda: task.make_optimizer(lr), "loss_fn": lambda: task.loss_fn,
        "train_loader": lambda: task.train_loader(seed), "val_loader": task.val_loader,
        "epochs": lambda: task.epochs, "step_fn": lambda: task.step_fn, "max_grad_norm": lambda: task.max_grad_norm,
        "precision": lambda: task.precision, "accumulation_steps": lambda: task.accumulation}
    out = {**options, **{k: make() for k, make in own.items() if options[k] is None}}
    if options["metric"] is None:
        out["metric"], out["higher_is_better"] = task.metric, task.higher_is_better
    return out


@dataclass(frozen=True)
class _Setup:
    """A run's options and what follows from them: the engine's run, the device, the fingerprint a checkpoint
    must match, the batch."""

    cfg: FitConfig
    run: LocalRun
    checkpoint_dir: Path | None
    fingerprint: dict[str, Any]
    effective_batch_size: int


def _setup(model: nn.Module, cfg: FitConfig) -> _Setup:
    """The engine's run for these options: its data order, the one optimizer step assembled once, the schedule."""
    if not isinstance(model, nn.Module):
        raise GradpilotError(f"model must be a torch.nn.Module or a gradpilot.Task, got {type(model).__name__}")
    base = model.module if isinstance(model, DistributedDataParallel) else model
    check_trains(base, cfg.optimizer)
    data = _batches(cfg.train_loader)
    world_size, _ = world()
    steps_per_epoch = math.ceil(data.per_epoch / cfg.accumulation_steps)
    # what a checkpoint must match, read before a scheduler touches the LRs (only a checkpointed run needs it)
    fingerprint = _run_fingerprint(base, cfg, data.per_epoch, world_size) if cfg.checkpoint_dir is not None else {}
    schedule = _make_schedule(cfg, steps_per_epoch * cfg.epochs)
    wrap = world_size > 1 and not isinstance(model, DistributedDataParallel)
    device = torch.device(cfg.device) if cfg.device is not None else model_device(base)
    parts = StepParts.assemble(DistributedDataParallel(model) if wrap else model, cfg.optimizer,
                               loss_fn=cfg.loss_fn, step_fn=cfg.step_fn, device=device, num_items=cfg.num_items,
                               max_grad_norm=cfg.max_grad_norm, precision=check_precision(cfg.precision or "fp32"),
                               world_size=world_size)
    val = cfg.val_loader
    validation = None if val is None else Validation(lambda: val, cfg.loss_fn, cfg.metric, cfg.step_fn, cfg.num_items)
    micro = _batch_size(cfg.train_loader) or 1
    run = LocalRun(parts, data, setting=Setting(float(cfg.optimizer.param_groups[0]["lr"]), micro,
                                                cfg.accumulation_steps),
                   schedule=schedule, validation=validation, model=base, higher_is_better=cfg.higher_is_better)
    return _Setup(cfg, run, None if cfg.checkpoint_dir is None else Path(cfg.checkpoint_dir), fingerprint,
                  _effective_batch(cfg.train_loader, steps_per_epoch, cfg.accumulation_steps, world_size))


def _batches(loader: Any) -> Batches:
    """The one data order: a loader a task made (``Task.train_loader``) is its dataset in the seed's order, read
    without its skipped items on resume; any other loader keeps its own order."""
    sampler = getattr(loader, "batch_sampler", None)
    if isinstance(sampler, SeededBatches):
        return Shuffled(loader.dataset, loader.collate_fn, sampler.micro_batch, sampler.seed, sampler.world,
                        sampler.rank)
    return FromLoader(loader)


def _run_fingerprint(model: nn.Module, cfg: FitConfig, batches: int, world_size: int) -> dict[str, Any]:
    """The settings a checkpoint must match for a restart to continue it."""
    name = cfg.scheduler if isinstance(cfg.scheduler, str) or cfg.scheduler is None else type(cfg.scheduler).__name__
    return {"epochs": cfg.epochs, "accumulation_steps": cfg.accumulation_steps, "batches_per_epoch": batches,
            "scheduler": repr((name, sorted(cfg.scheduler_options.items()))), "world_size": world_size,
            "max_grad_norm": cfg.max_grad_norm, "early_stopping": repr(cfg.early_stopping),
            "precision": cfg.precision or "fp32",
            "model": fingerprint.model_layout(model), "train_data": fingerprint.data_digest(cfg.train_loader),
            **fingerprint.optimizer_settings(cfg.optimizer)}


def _batch_size(loader: Any) -> int | None:
    size = getattr(loader, "batch_size", None) or getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return int(size) if size else None


def _effective_batch(loader: Any, steps_per_epoch: int, accumulation: int, world_size: int) -> int:
    """Items per optimizer step: micro-batch × accumulation × processes, or, when batches have no fixed size
    (a batch sampler that buckets by length), the dataset's items over the epoch's optimizer steps."""
    size = _batch_size(loader)
    if size:
        return size * accumulation * world_size
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


class _Fit:
    """fit's driver: the run, what fit keeps beside it (validations, best weights, why it stops), and the
    steps it takes around the engine's — after each optimizer step, and at each epoch's end."""

    EXTRA = frozenset({"fingerprint", "epoch_steps", "val", "val_losses", "best_state", "stop_reason"})

    def __init__(self, setup: _Setup) -> None:
        self.s, self.run, cfg = setup, setup.run, setup.cfg
        self.run.on_step = self.after_step
        self.world, self.rank = world()
        self.autopilot = cfg.monitor is not None and cfg.monitor.autopilot
        self.keep_best = cfg.early_stopping is not None or self.autopilot
        self.good = Snapshot()
        self.val: list[float] = []
        self.val_losses: list[float] = []
        self.epoch_steps: list[int] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stop_reason: str | None = None
        self.resumed_from: int | None = None
        name = getattr(cfg.metric, "__name__", None)
        column = None if cfg.metric is None else metric_column(None if str(name).startswith("<") else name,
                                                               cfg.higher_is_better)
        self.log = None if setup.checkpoint_dir is None else MetricsLog(setup.checkpoint_dir, column)

    @property
    def epochs_done(self) -> int:
        return len(self.epoch_steps)

    def going(self) -> bool:
        return self.epochs_done < self.s.cfg.epochs and self.stop_reason is None

    def start(self) -> None:
        """Continue from the checkpoint in ``checkpoint_dir`` if there is one (with the same settings)."""
        folder = self.s.checkpoint_dir
        saved = None
        if folder is not None:
            checkpoint.remove_stale_temporaries(folder)
            saved = checkpoint.load(folder)
        if saved is not None and folder is not None:
            fingerprint.check_same(saved["extra"].get("fingerprint", {}), self.s.fingerprint,
                                   what=f"{folder} holds a run",
                                   remedy="use a new checkpoint_dir, or the same arguments to continue it")
            self.run.resume(saved)
            self._restore(saved["extra"])
            self.resumed_from = self.run.steps
            self._write_log(rewrite=True)
            log.info("resuming from %s at epoch %d, step %d", folder, self.epochs_done + 1, self.run.steps)
        if self.autopilot:
            self.good.take(self.run.steps, self.run.model, self.run.optimizer)

    def _restore(self, extra: dict[str, Any]) -> None:
        self.epoch_steps, self.val, self.val_losses = list(extra["epoch_steps"]), list(extra["val"]), \
            list(extra["val_losses"])
        self.best_state, self.stop_reason = extra["best_state"], extra["stop_reason"]

    def after_step(self) -> None:
        """Tell the callback and the monitor, steer under autopilot, checkpoint when due."""
        cfg, run = self.s.cfg, self.run
        if cfg.on_step is not None:
            cfg.on_step(run.steps, run.lrs[-1])
        if cfg.monitor is not None:
            new = cfg.monitor.update(run.steps, run.last_step_loss, run.lrs[-1])
            if self.autopilot:
                steer(new, cfg.monitor, self.good, run.steps, run.model, run.optimizer, run.schedule)
        if cfg.checkpoint_every is not None and run.steps % cfg.checkpoint_every == 0:
            self.checkpoint()

    def end_epoch(self) -> None:
        """Validate, keep the best weights, step an epoch schedule, decide whether to stop, checkpoint."""
        self.epoch_steps.append(self.run.steps)
        value = self.validate() if self.run.validation is not None else None
        schedule = self.run.schedule
        if schedule is not None and schedule.interval == "epoch":
            schedule.step(value)
        self.stop_reason = self._stop_reason()
        self.checkpoint()

    def validate(self) -> float:
        cfg = self.s.cfg
        score = self.run.evaluate()
        self.val.append(score.value)
        self.val_losses.append(score.loss)
        log.info("epoch %d: validation %s %.5g", self.epochs_done, "metric" if cfg.metric else "loss", score.value)
        best = (cfg.early_stopping or EarlyStopping()).best_epoch(self.val, cfg.mode)
        if self.keep_best and best == len(self.val) - 1:
            self.best_state = model_state(self.run.model)
        return score.value

    def _stop_reason(self) -> str | None:
        """Why the run ends after this epoch, or None to go on."""
        cfg, epoch = self.s.cfg, self.epochs_done
        if cfg.monitor is not None and self.run.validation is not None:
            overfit = cfg.monitor.end_epoch(self.run.steps, self.val_losses[-1])
            if self.autopilot and overfit:
                cfg.monitor.record(self.run.steps, "overfitting", f"stopped after epoch {epoch}: {overfit[0].evidence}")
                return f"autopilot stopped at epoch {epoch}: overfitting"
        if cfg.early_stopping is not None and cfg.early_stopping.should_stop(self.val, cfg.mode):
            best = cfg.early_stopping.best_epoch(self.val, cfg.mode)
            if best is None:
                return f"early stopping at epoch {epoch}: validation metric not finite"
            return (f"early stopping at epoch {epoch}: no improvement in the validation metric for "
                    f"{cfg.early_stopping.patience} epochs (best {self.val[best]:.5g} at epoch {best + 1})")
        return f"completed {cfg.epochs} epochs" if epoch >= cfg.epochs else None

    def checkpoint(self) -> None:
        """Write the metrics log, then the checkpoint (rank 0 only); a restart rewrites the log from it."""
        folder = self.s.checkpoint_dir
        if folder is None:
            return
        self.run.losses  # noqa: B018 — read on every process: under data parallel it is a collective
        if self.rank != 0:
            return
        self._write_log()
        extra = {"fingerprint": self.s.fingerprint, "epoch_steps": list(self.epoch_steps), "val": list(self.val),
                 "val_losses": list(self.val_losses), "best_state": self.best_state, "stop_reason": self.stop_reason}
        assert set(extra) == self.EXTRA
        self.run.save(folder, extra)

    def _write_log(self, *, rewrite: bool = False) -> None:
        if self.log is not None and self.rank == 0:
            self.log.write(self.run.losses, self.run.lrs, self.epoch_steps, self.val_losses,
                           self.val if self.s.cfg.metric is not None else [], rewrite=rewrite)

    def finish(self) -> bool:
        """Put the best weights back when the run kept them; True when it did."""
        restored = self.keep_best and self.best_state is not None
        if restored and self.best_state is not None:
            self.run.model.load_state_dict(self.best_state)
        return restored

    def result(self, *, restored: bool) -> FitResult:
        cfg, monitor = self.s.cfg, self.s.cfg.monitor
        best_index = (cfg.early_stopping or EarlyStopping()).best_epoch(self.val, cfg.mode) if self.val else None
        return FitResult(
            train_losses=tuple(self.run.losses), lrs=tuple(self.run.lrs), val_metrics=tuple(self.val),
            best_epoch=None if best_index is None else best_index + 1,
            stop_reason=self.stop_reason or f"completed {cfg.epochs} epochs", epochs_completed=self.epochs_done,
            steps=self.run.steps, effective_batch_size=self.s.effective_batch_size, val_losses=tuple(self.val_losses),
            epoch_steps=tuple(self.epoch_steps), resumed_from_step=self.resumed_from, restored_best=restored,
            findings=tuple(monitor.findings) if monitor else (), actions=tuple(monitor.actions) if monitor else (),
        )
