"""gradpilot on Lightning: the range test on a ``LightningModule``'s own pieces, and a callback that watches
the run (and, with ``autopilot=True``, steers it through the trainer's own means).

    from gradpilot.integrations.lightning import GradpilotCallback, find_lr
    result = find_lr(trainer, module, datamodule)               # training_step, configure_optimizers, data
    trainer = L.Trainer(callbacks=[GradpilotCallback(autopilot=True)])   # gradpilot-diagnosis.json in log_dir

Needs the ``lightning`` extra: ``pip install 'gradpilot[lightning]'``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from gradpilot.errors import GradpilotError
from gradpilot.integrations.lightning_runner import (
    LightningRunner,
    WindowLoss,
    configured_optimizer,
    monitored,
    training_loss,
)
from gradpilot.lr import range_test as lr_finder
from gradpilot.train.monitor import Monitor, log_finding, steer
from gradpilot.train.state import Snapshot
from gradpilot.train.task import Task

log = logging.getLogger(__name__)
DIAGNOSIS_FILE = "gradpilot-diagnosis.json"


def find_lr(trainer: pl.Trainer, module: pl.LightningModule, datamodule: pl.LightningDataModule | None = None,
            **kwargs: Any) -> lr_finder.LRFinderResult:
    """The LR range test on ``module`` with its ``training_step`` as the loss, the optimizer its
    ``configure_optimizers`` makes, the train dataloader of ``datamodule`` (else the module's) and the
    trainer's ``accumulate_grad_batches``. The module's weights are left as they were. ``kwargs`` go to
    ``gradpilot.find_lr`` (``num_steps``, ``start_lr``, ``end_lr``, ``rule``, ...)."""
    if not isinstance(module, pl.LightningModule):
        raise GradpilotError(f"find_lr needs a LightningModule, got {type(module).__name__}")
    if datamodule is not None:
        datamodule.setup("fit")
    source = datamodule if datamodule is not None else module
    loader = source.train_dataloader()
    optimizer = configured_optimizer(trainer, module, loader)

    def step(_model: torch.nn.Module, batch: Any) -> torch.Tensor:
        return training_loss(module, batch)

    kwargs.setdefault("accumulation_steps", int(trainer.accumulate_grad_batches))
    with warnings.catch_warnings():  # self.log() outside a fit has nowhere to go: Lightning says so per step
        warnings.filterwarnings("ignore", message=".*self.log.*")
        return lr_finder.find_lr(module, optimizer, train_loader=loader, step_fn=step, **kwargs)


def task_from_trainer(made: Any, name: str = "lightning",
                      make_trainer: Callable[[dict[str, Any]], Any] | None = None) -> Task:
    """The ``Task`` ``gradpilot tune`` works on for a ``make_trainer(plan)`` file returning ``(trainer, module)``
    or ``(trainer, module, datamodule)``: the module's ``training_step`` as the loss the range test trains on,
    its ``configure_optimizers`` optimizer at each LR tried, the train dataloader (its batch size is the
    user's code's: tune keeps it) and the validation dataset, the trainer's ``max_epochs``, clipping and
    ``precision``. With ``make_trainer``, every run tune makes trains through ``Trainer.fit()`` of the trainers
    it builds and is scored by their ``validate()`` (``lightning_runner.LightningRunner``)."""
    _check_made(made)
    trainer, module = made[0], made[1]
    datamodule = made[2] if len(made) == 3 else None
    if datamodule is not None:
        datamodule.setup("fit")
    source = datamodule if datamodule is not None else module
    train, val = source.train_dataloader(), source.val_dataloader()
    first = configured_optimizer(trainer, module, train)
    ratios = [float(g["lr"]) / float(first.param_groups[0]["lr"]) for g in first.param_groups]

    def step(_model: torch.nn.Module, batch: Any) -> torch.Tensor:
        with warnings.catch_warnings():  # self.log() outside a fit has nowhere to go
            warnings.filterwarnings("ignore", message=".*self.log.*")
            return training_loss(module, batch)

    def make(_params: Any, lr: float) -> torch.optim.Optimizer:
        opt = configured_optimizer(trainer, module, train)
        for group, ratio in zip(opt.param_groups, ratios, strict=True):
            group["lr"] = lr * ratio
        return opt

    key, higher = monitored(trainer)
    runner = None if make_trainer is None else LightningRunner(make_trainer, key)
    return Task(model=module, train_data=train if runner is not None else train.dataset, loss_fn=None,
                val_data=val.dataset, higher_is_better=higher, optimizer=make,
                lr=float(first.param_groups[0]["lr"]), batch_size=int(train.batch_size or 1),
                accumulation=int(trainer.accumulate_grad_batches), epochs=max(1, int(trainer.max_epochs or 1)),
                name=name, step_fn=step, collate_fn=train.collate_fn,
                max_grad_norm=float(trainer.gradient_clip_val) if trainer.gradient_clip_val else None,
                precision=_precision(trainer), runner=runner, metric_name=None if key == "val_loss" else key)


def _precision(trainer: pl.Trainer) -> str:
    """The trainer's ``precision`` in gradpilot's words: ``"bf16-mixed"`` is bf16, ``"16-mixed"`` fp16."""
    precision = str(trainer.precision)
    return "bf16" if precision.startswith("bf16") else "fp16" if precision.startswith("16") else "fp32"


def _check_made(made: Any) -> None:
    if not isinstance(made, tuple) or len(made) not in (2, 3) or not isinstance(made[0], pl.Trainer) \
            or not isinstance(made[1], pl.LightningModule):
        raise GradpilotError("make_trainer() must return (lightning.Trainer, LightningModule[, LightningDataModule])")


class GradpilotCallback(pl.Callback):
    """Feeds gradpilot's monitor from the run: the loss ``training_step`` returned (kept as a tensor and read
    only at checks: no host sync per step), the LR of the trainer's first optimizer, and ``val_loss`` from
    the logged metrics after each validation. Logs each finding as it appears and writes
    ``gradpilot-diagnosis.json`` (the ``gradpilot diagnose --json`` shape, with what the autopilot did) into
    the trainer's ``log_dir`` (``default_root_dir`` without a logger) when training ends.

    With ``autopilot=True`` it acts as ``gradpilot.fit``'s autopilot does: on oscillation it lowers the LR
    (the optimizer's param groups and its schedulers' base LRs); on NaN or divergence it puts back the last
    state that checked clean and lowers the LR more; on overfitting it stops the run (``trainer.should_stop``;
    a ``ModelCheckpoint(monitor="val_loss")`` keeps the best weights).

    With ``probe=True``, a finding that only hints at the LR (``Finding.sure`` False) is measured instead of
    guessed: ``gradpilot.probing.measure.probe_live`` trains short branches from the run as it stands (the module, the
    trainer's first optimizer and its dataloaders; ``probe_share`` of the run, everything put back after) and
    logs the verdict in ``probes``; with ``autopilot=True`` as well, the LR moves to the one the probe named.
    """

    def __init__(self, autopilot: bool = False, *, check_every: int = 10, val_key: str = "val_loss",
                 probe: bool = False, probe_share: float = 0.05, stop_file: str | Path | None = None) -> None:
        self.monitor = Monitor(check_every=check_every, autopilot=autopilot, on_finding=log_finding)
        self.good = Snapshot()
        self.val_key = val_key
        self.output: Path | None = None
        self.probe, self.probe_share = probe, probe_share
        self.probes: list[Any] = []  # (step, ProbeResult) of every probe taken
        self._window = WindowLoss()
        self.stop_file = None if stop_file is None else Path(stop_file)

    def on_train_start(self, trainer: pl.Trainer, _module: pl.LightningModule) -> None:
        self._window.start(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, _batch: Any,
                           _batch_idx: int) -> None:
        loss = self._window.add(trainer, outputs)  # the whole window's loss, once the optimizer has stepped
        if self.stop_file is not None and self.stop_file.exists():  # gradpilot watch --stop-file, from outside
            trainer.should_stop = True
            self.monitor.record(int(trainer.global_step), "stopped", f"stopped: {self.stop_file} appeared")
        if loss is None:
            return
        step = int(trainer.global_step)
        optimizer = trainer.optimizers[0]
        new = self.monitor.update(step, loss, float(optimizer.param_groups[0]["lr"]))
        configs = trainer.lr_scheduler_configs
        scheduler = configs[0].scheduler if configs else None
        if self.monitor.autopilot:
            steer(new, self.monitor, self.good, step, module, optimizer, scheduler)
        if self.probe and any(f.lr is not None and not f.sure for f in new):
            self._measure(trainer, module, step, scheduler)

    def _measure(self, trainer: pl.Trainer, module: pl.LightningModule, step: int, scheduler: Any) -> None:
        """Probe the run as it stands and act on it under autopilot (the module's ``training_step`` is its loss,
        on the trainer's validation data too)."""
        from gradpilot.probing.measure import live_task, probe_live
        from gradpilot.schedules import builders as schedules

        train, evaluation = trainer.train_dataloader, trainer.val_dataloaders
        evaluation = evaluation[0] if isinstance(evaluation, (list, tuple)) else evaluation
        if train is None or evaluation is None:
            return
        optimizer = trainer.optimizers[0]
        steps = trainer.estimated_stepping_batches  # inf for a run with no end: take what has been trained twice
        steps = int(steps) if math.isfinite(steps) else 2 * max(1, step)
        items = max(1, steps) * int(getattr(train, "batch_size", None) or 1) * int(trainer.accumulate_grad_batches)
        task = live_task(module, optimizer, train, evaluation, lambda _m, batch: training_loss(module, batch),
                         items=items, max_grad_norm=float(trainer.gradient_clip_val) if trainer.gradient_clip_val
                         else None, accumulation=int(trainer.accumulate_grad_batches))
        with warnings.catch_warnings():  # self.log() inside a probe's branches has nowhere to go
            warnings.filterwarnings("ignore", message=".*self.log.*")
            try:
                found = probe_live(task, optimizer, share=self.probe_share, history=self.monitor.history())
            except GradpilotError as exc:  # a probe that cannot measure never stops the user's training
                log.warning("gradpilot probe at step %d skipped: %s", step, exc)
                return
        self.probes.append((step, found))
        log.warning("gradpilot probe at step %d: the learning rate %.3g is %s (use %.3g), measured on %.1f%% of a run",
                    step, found.learning_rate, found.verdict, found.suggested_learning_rate, 100 * found.cost_runs)
        if self.monitor.autopilot and found.verdict in ("too high", "too low"):
            factor = found.suggested_learning_rate / found.learning_rate
            before, after = schedules.multiply_lr(optimizer, scheduler, factor)
            self.monitor.record(step, "probe", f"probe: lr {before:.3g} → {after:.3g} ({found.verdict})")

    def on_validation_epoch_end(self, trainer: pl.Trainer, _module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.val_key)
        if value is None or trainer.sanity_checking:
            return
        overfit = self.monitor.end_epoch(int(trainer.global_step), float(value))
        if self.monitor.autopilot and overfit:
            trainer.should_stop = True
            self.monitor.record(int(trainer.global_step), "overfitting", f"stopped the run: {overfit[0].evidence}")

    def on_train_end(self, trainer: pl.Trainer, _module: pl.LightningModule) -> None:
        if self.monitor.steps:
            folder = Path(trainer.log_dir or trainer.default_root_dir)
            self.output = self.monitor.write_json(folder / DIAGNOSIS_FILE, "lightning.Trainer (gradpilot callback)")
