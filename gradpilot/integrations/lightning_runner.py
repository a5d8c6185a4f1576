"""Runs that drive the user's own Lightning ``Trainer``: every short run, branch and final run ``tune`` makes
for a ``make_trainer(plan)`` file returning ``(trainer, module[, datamodule])`` goes through ``Trainer.fit()``
— its loop, its callbacks, its ``precision`` (``"bf16-mixed"``), its logger — resuming from the checkpoint the
last stretch saved (``ckpt_path``), and every score is its ``Trainer.validate()``.

The schedule is given in Lightning's own terms: the optimizer the module's ``configure_optimizers`` makes, at
the run's LR (other param groups keep their ratio to the first), paired with a per-step ``LambdaLR`` over
gradpilot's ``lr_factor`` schedule. A stretch ends at ``max_steps`` (set as Lightning's own LR finder sets it).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from gradpilot.errors import GradpilotError
from gradpilot.schedules.factor import DecayType, Wsd
from gradpilot.train.seam import Branch, Ledger, RunRecord, Score, Setting
from gradpilot.train.starts import read_start
from gradpilot.train.state import load_keeping_lrs, load_weights, trainable_state
from gradpilot.train.task import Task

MakeTrainer = Callable[[dict[str, Any]], Any]


class LightningRunner:
    """Makes runs of a ``make_trainer(plan)`` file's Lightning trainer (``Task.runner``); ``val_key`` is the
    metric its ``validation_step`` logs that scores a run (lower is better unless the task says otherwise)."""

    def __init__(self, make: MakeTrainer, val_key: str = "val_loss") -> None:
        self.make, self.val_key = make, val_key
        self._said: set[str] = set()

    def say_once(self, message: str) -> None:
        """A warning the first time it arises in this runner's runs."""
        if message not in self._said:
            self._said.add(message)
            warnings.warn(message, stacklevel=4)

    def __call__(self, task: Task, setting: Setting, *, seed: int, weights: dict[str, torch.Tensor],
                 optimizer_state: dict[str, Any] | None = None, folder: Path | None = None) -> LightningRun:
        del seed  # the trainer's own seeding rules its data order
        return LightningRun(self, task, setting, weights=weights, folder=folder, optimizer_state=optimizer_state)


class _StartFrom(pl.Callback):
    """Gives the module's optimizer, once made, a saved state (a probe's run going on from a checkpoint); each
    param group keeps the LR the run's schedule set."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        del module
        load_keeping_lrs(trainer.optimizers[0], self.state)


class WindowLoss:
    """The training loss of each optimizer step from what ``on_train_batch_end`` hands over: Lightning divides
    each micro-batch's loss by the accumulation steps, so a window's loss is their sum; a step is done when the
    trainer's ``global_step`` has moved (left on the device: no host sync)."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.window: torch.Tensor | None = None

    def add(self, trainer: pl.Trainer, outputs: Any) -> torch.Tensor | None:
        """The step's loss once its window is complete, else None."""
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return None
        self.window = loss.detach() if self.window is None else self.window + loss.detach()
        step = int(trainer.global_step)
        if self.last is not None and step == self.last:
            return None  # an accumulation step: the optimizer has not stepped
        done, self.window, self.last = self.window, None, step
        return done

    def start(self, trainer: pl.Trainer) -> None:
        self.last, self.window = int(trainer.global_step), None


class _Steps(pl.Callback):
    """Notes the LR each optimizer step takes (before it steps) and its loss (left on the device until read)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.losses: list[torch.Tensor] = []
        self.window = WindowLoss()

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        del module
        self.window.start(trainer)

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        del trainer, module
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        del module, batch, batch_idx
        done = self.window.add(trainer, outputs)
        if done is not None:
            self.losses.append(done)


class LightningRun(Ledger):
    """One run through the user's Lightning trainer (``seam.Run``; its bookkeeping is ``seam.Ledger``'s)."""

    def __init__(self, owner: LightningRunner, task: Task, setting: Setting, *, weights: dict[str, torch.Tensor],
                 folder: Path | None, optimizer_state: dict[str, Any] | None = None) -> None:
        super().__init__(setting, task.higher_is_better)
        self.owner, self.task, self.start_weights = owner, task, weights
        self.start_optimizer = optimizer_state
        self.folder = folder if folder is not None else Path(tempfile.mkdtemp(prefix="gradpilot-run-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.checkpoint: Path | None = None
        self._losses: list[float] = []
        self.made: tuple[pl.Trainer, pl.LightningModule, Any] | None = None  # the last trainer, module, data

    @property
    def losses(self) -> list[float]:
        return list(self._losses)

    def advance(self, to_step: int) -> None:
        if to_step <= self.steps:
            return
        lrs, losses = self._fit(self.setting.schedule, to_step)
        self.lrs += lrs
        self._losses += losses
        self.steps = to_step
        self._save_to(self.folder / f"step-{to_step}.ckpt")

    def branch(self, decay: int, decay_type: DecayType = "linear", *, keep: bool = False,
               weights: bool = False) -> Branch:
        schedule = self.setting.schedule.decayed_from(self.steps, decay, decay_type)
        lrs, losses = self._fit(schedule, self.steps + decay) if decay else ([], [])
        score = self.evaluate()
        made = Branch(self.steps, decay, score, schedule, tuple(lrs), tuple(losses),
                      self.weights() if weights else None)
        if not keep:
            self.made = None  # its module is the branch's: the run is at its checkpoint
        return made

    def evaluate(self) -> Score:
        """The trainer's own ``validate()``; the score is what the module logged under ``val_key``."""
        trainer, module, data = self._current()
        trainer.limit_val_batches = 1.0
        with self.spending("validation", validations=1):
            results = trainer.validate(module, datamodule=data, verbose=False)
        key = self.owner.val_key
        logged = {k: float(v) for r in results for k, v in r.items()}
        if key not in logged:
            raise GradpilotError(f"validation logged no {key!r} (it logged {', '.join(sorted(logged)) or 'nothing'}): "
                                 f"log it in validation_step (self.log({key!r}, ...))")
        return self.score(logged[key], logged.get("val_loss", logged[key]), has_loss="val_loss" in logged)

    def weights(self) -> dict[str, torch.Tensor]:
        return trainable_state(self._current()[1])

    def save(self, path: Path) -> None:
        """The run's checkpoint moved into the folder ``path`` (``run.ckpt``, with the run's record,
        ``seam.RECORD``); the run goes on from there."""
        if self.checkpoint is None:
            raise GradpilotError("a run that has not trained has nothing to save")
        with self.spending("io"):
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)
            shutil.move(str(self.checkpoint), str(path / "run.ckpt"))
            self.checkpoint = path / "run.ckpt"
            self.record(self._losses).write(path)

    def load(self, path: Path) -> None:
        record = RunRecord.read(path)
        self.restore(record)
        self.checkpoint = path / "run.ckpt"
        self._losses = [math.nan if v is None else v for v in record.losses]

    def _current(self) -> tuple[pl.Trainer, pl.LightningModule, Any]:
        """The trainer and module as the run stands: the last ones fitted, else made and given its weights."""
        if self.made is None:
            made = self._make(self.setting.schedule, max(1, self.steps))
            state = self.start_weights if self.checkpoint is None else read_start(self.checkpoint, made[1]).weights
            load_weights(made[1], state)
        assert self.made is not None
        return self.made

    def _make(self, schedule: Wsd, max_steps: int) -> tuple[pl.Trainer, pl.LightningModule, Any]:
        s = self.setting
        plan = {"learning_rate": s.lr, "per_device_train_batch_size": s.micro_batch,
                "gradient_accumulation_steps": s.accumulation, "max_steps": max_steps,
                **schedule.training_arguments()}
        made = self.owner.make(plan)
        if not isinstance(made, tuple) or len(made) not in (2, 3) or not isinstance(made[0], pl.Trainer):
            raise GradpilotError("make_trainer() must return (lightning.Trainer, LightningModule"
                                 "[, LightningDataModule])")
        trainer, module, data = made[0], made[1], made[2] if len(made) == 3 else None
        bound(trainer, max_steps, s.accumulation)
        self._keep_to_its_folder(trainer)
        _schedule(module, s.lr, schedule)
        self.made = (trainer, module, data)
        return self.made

    def _keep_to_its_folder(self, trainer: pl.Trainer) -> None:
        """The run's files in tune's folder, not the user's: its logger's and its checkpoints'. The user's
        ``EarlyStopping`` is set aside in the run (its validation is the run's own, where a decision needs it;
        the trunk's branches choose the epochs) — and said, once."""
        if trainer.loggers:
            from lightning.pytorch.loggers import CSVLogger

            trainer.loggers = [CSVLogger(save_dir=str(self.folder), name="logs")]
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, pl.callbacks.ModelCheckpoint):
                callback.dirpath = str(self.folder / "checkpoints")
        stopping = [c for c in trainer.callbacks if isinstance(c, pl.callbacks.EarlyStopping)]  # type: ignore[attr-defined]
        if stopping:
            trainer.callbacks[:] = [c for c in trainer.callbacks if c not in stopping]  # type: ignore[attr-defined]
            self.owner.say_once(f"tune sets the trainer's EarlyStopping(monitor={stopping[0].monitor!r}) aside in its "
                                "runs: their validation is tune's own, and the trunk's branches choose the epochs")

    def _fit(self, schedule: Wsd, max_steps: int) -> tuple[list[float], list[float]]:
        """One ``fit()`` call to ``max_steps``, resuming from the run's checkpoint (or from its start weights)."""
        trainer, module, data = self._make(schedule, max_steps)
        steps = _Steps()
        trainer.callbacks.append(steps)  # type: ignore[attr-defined]  # Lightning's list, typed only at runtime
        if self.checkpoint is None:
            load_weights(module, self.start_weights)
            if self.start_optimizer is not None:
                trainer.callbacks.append(_StartFrom(self.start_optimizer))  # type: ignore[attr-defined]
        with self.spending("training", items=(max_steps - self.steps) * self.setting.batch):
            trainer.fit(module, datamodule=data, ckpt_path=str(self.checkpoint) if self.checkpoint else None)
        losses = torch.stack(steps.losses).double().tolist() if steps.losses else []
        return steps.lrs, losses

    def _save_to(self, path: Path) -> None:
        with self.spending("io"):
            self._current()[0].save_checkpoint(str(path))
        old, self.checkpoint = self.checkpoint, path
        if old is not None and old.parent == path.parent and old != path:
            old.unlink(missing_ok=True)


def bound(trainer: pl.Trainer, max_steps: int, accumulation: int) -> None:
    """A stretch of ``max_steps`` optimizer steps with the run's accumulation and no validation of the trainer's
    own in between (the run validates where a decision needs it): set as Lightning's LR finder sets them."""
    trainer.fit_loop.epoch_loop.max_steps = max_steps
    trainer.fit_loop.max_epochs = -1
    trainer.accumulate_grad_batches = accumulation
    trainer.limit_val_batches = 0


def _schedule(module: pl.LightningModule, lr: float, schedule: Wsd) -> None:
    """The module's own optimizer at ``lr`` (its param groups keeping their ratios), paired with a per-step LR
    schedule: what this module's ``configure_optimizers`` returns for the stretch."""
    own = type(module).configure_optimizers

    def configure_optimizers() -> dict[str, Any]:
        optimizer = as_constructed(first_optimizer(own(module)))
        first = float(optimizer.param_groups[0]["lr"]) or 1.0
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] = lr * float(group["lr"]) / first
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    module.configure_optimizers = configure_optimizers  # type: ignore[method-assign,assignment]


def training_loss(module: pl.LightningModule, batch: Any) -> torch.Tensor:
    out = module.training_step(batch, 0)
    loss = out["loss"] if isinstance(out, dict) else out
    if not isinstance(loss, torch.Tensor):
        raise GradpilotError("training_step returned no loss: return the loss tensor (or {'loss': ...})")
    return loss


def configured_optimizer(trainer: pl.Trainer, module: pl.LightningModule, train: Any) -> torch.optim.Optimizer:
    """The module's optimizer as ``configure_optimizers`` makes it outside a fit, with the settings the user gave
    it (``as_constructed``). A ``configure_optimizers`` that reads ``self.trainer`` — Lightning's own OneCycleLR
    recipe reads ``estimated_stepping_batches`` — sees the user's trainer, with the steps of its run."""
    steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else \
        math.ceil(len(train) / max(1, int(trainer.accumulate_grad_batches))) * max(1, int(trainer.max_epochs or 1))
    module.trainer = _Attached(trainer, steps)  # type: ignore[assignment]
    try:
        return as_constructed(first_optimizer(module.configure_optimizers()))
    finally:
        module.trainer = None


class _Attached:
    """The user's trainer as ``configure_optimizers`` reads it before any fit: every attribute the trainer's own,
    and ``estimated_stepping_batches`` the optimizer steps its run will take."""

    def __init__(self, trainer: pl.Trainer, steps: int) -> None:
        self._trainer, self.estimated_stepping_batches = trainer, steps

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trainer, name)


def as_constructed(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer with the settings the user built it with, as they were before a scheduler's constructor
    changed them: a scheduler keeps each group's LR as ``initial_lr`` (OneCycleLR its peak as ``max_lr``), and a
    scheduler that cycles momentum (OneCycleLR, CyclicLR) overwrote it, which ``defaults`` still holds."""
    for group in optimizer.param_groups:
        group["lr"] = group.get("max_lr", group.get("initial_lr", group["lr"]))
        if "max_momentum" in group:
            if "betas" in group and "betas" in optimizer.defaults:
                group["betas"] = (optimizer.defaults["betas"][0], *group["betas"][1:])
            elif "momentum" in group and "momentum" in optimizer.defaults:
                group["momentum"] = optimizer.defaults["momentum"]
        for key in ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum"):  # the scheduler's
            group.pop(key, None)
    return optimizer


def monitored(trainer: pl.Trainer) -> tuple[str, bool]:
    """The metric the user's trainer judges its runs by — its ``ModelCheckpoint``'s monitor, else its
    ``EarlyStopping``'s — and whether higher is better; ``val_loss`` (lower) where neither names one."""
    for callback in (trainer.checkpoint_callback, trainer.early_stopping_callback):
        monitor = getattr(callback, "monitor", None)
        if monitor:
            return str(monitor), getattr(callback, "mode", "min") == "max"
    return "val_loss", False


def first_optimizer(configured: Any) -> torch.optim.Optimizer:
    """The optimizer out of any shape ``configure_optimizers`` may return."""
    if isinstance(configured, torch.optim.Optimizer):
        return configured
    if isinstance(configured, dict):
        return first_optimizer(configured["optimizer"])
    if isinstance(configured, (list, tuple)) and configured:
        return first_optimizer(configured[0])
    raise GradpilotError(f"configure_optimizers returned {type(configured).__name__}: gradpilot needs an optimizer")
