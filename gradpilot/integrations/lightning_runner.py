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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from gradpilot.errors import GradpilotError
from gradpilot.schedules.factor import DecayType, Wsd
from gradpilot.train.seam import Branch, Ledger, RunRecord, Score, Setting
from gradpilot.train.starts import read_start
from gradpilot.train.state import load_keeping_lrs, model_state
from gradpilot.train.task import Task

MakeTrainer = Callable[[dict[str, Any]], Any]


class LightningRunner:
    """Makes runs of a ``make_trainer(plan)`` file's Lightning trainer (``Task.runner``); ``val_key`` is the
    metric its ``validation_step`` logs that scores a run (lower is better unless the task says otherwise)."""

    def __init__(self, make: MakeTrainer, val_key: str = "val_loss") -> None:
        self.make, self.val_key = make, val_key

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


class _Steps(pl.Callback):
    """Notes the LR each optimizer step takes (before it steps) and its loss (left on the device until read)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.losses: list[torch.Tensor] = []
        self._last = -1

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        del trainer, module
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        del module, batch, batch_idx
        step = int(trainer.global_step)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if step == self._last or not isinstance(loss, torch.Tensor):
            return  # an accumulation step: the optimizer has not stepped
        self._last = step
        self.losses.append(loss.detach())


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
        return self.score(logged[key], logged.get("val_loss", logged[key]))

    def weights(self) -> dict[str, torch.Tensor]:
        return model_state(self._current()[1])

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
            made[1].load_state_dict(state)
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
        _schedule(module, s.lr, schedule)
        self.made = (trainer, module, data)
        return self.made

    def _fit(self, schedule: Wsd, max_steps: int) -> tuple[list[float], list[float]]:
        """One ``fit()`` call to ``max_steps``, resuming from the run's checkpoint (or from its start weights)."""
        trainer, module, data = self._make(schedule, max_steps)
        steps = _Steps()
        trainer.callbacks.append(steps)  # type: ignore[attr-defined]  # Lightning's list, typed only at runtime
        if self.checkpoint is None:
            module.load_state_dict(self.start_weights)
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
        optimizer = first_optimizer(own(module))
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


def first_optimizer(configured: Any) -> torch.optim.Optimizer:
    """The optimizer out of any shape ``configure_optimizers`` may return."""
    if isinstance(configured, torch.optim.Optimizer):
        return configured
    if isinstance(configured, dict):
        return first_optimizer(configured["optimizer"])
    if isinstance(configured, (list, tuple)) and configured:
        return first_optimizer(configured[0])
    raise GradpilotError(f"configure_optimizers returned {type(configured).__name__}: gradpilot needs an optimizer")
