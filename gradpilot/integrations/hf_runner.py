"""Runs that drive the user's own Hugging Face ``Trainer``: every short run, branch and final run ``tune`` makes
for a ``make_trainer(plan)`` file goes through ``Trainer.train()`` — its loop, its callbacks, its mixed
precision (``bf16``/``fp16``), its logging — with the schedule in its own terms.

A run is a chain of ``train()`` calls on trainers ``make_trainer`` builds, each from the plan so far
(``learning_rate``, the batch, ``gradient_accumulation_steps``, ``max_steps``, and the schedule as
``lr_scheduler_type``/``lr_scheduler_kwargs``/``warmup_steps``), each resuming from the checkpoint the last one
saved (``resume_from_checkpoint``: weights, optimizer, scheduler step, RNG, the place in the data). A branch
is one more call whose schedule decays from the step it starts at (``warmup_stable_decay``) and ends in the
trainer's own ``evaluate()``. Between calls only the newest checkpoint is kept.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from gradpilot.errors import GradpilotError
from gradpilot.schedules.factor import DecayType, Wsd
from gradpilot.train.seam import Branch, Ledger, RunRecord, Score, Setting
from gradpilot.train.starts import read_start
from gradpilot.train.state import load_keeping_lrs, load_weights, trainable_state
from gradpilot.train.task import Task

MakeTrainer = Callable[[dict[str, Any]], Any]


class TrainerRunner:
    """Makes runs of a ``make_trainer(plan)`` file's trainer (``Task.runner``)."""

    def __init__(self, make: MakeTrainer, metric: str | None = None) -> None:
        self.make, self.metric = make, metric

    def __call__(self, task: Task, setting: Setting, *, seed: int, weights: dict[str, torch.Tensor],
                 optimizer_state: dict[str, Any] | None = None, folder: Path | None = None) -> TrainerRun:
        return TrainerRun(self, task, setting, seed=seed, weights=weights, folder=folder,
                          optimizer_state=optimizer_state)


class _StartFrom(TrainerCallback):
    """Gives the trainer's optimizer, once made, a saved state (a probe's run going on from a checkpoint); each
    param group keeps the LR the trainer's own scheduler set, the run's, not the one saved."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        del args, state, control
        load_keeping_lrs(kwargs["optimizer"], self.state)


class _Steps(TrainerCallback):
    """Notes the LR each optimizer step took and the losses the trainer logged; asks for a checkpoint at the
    last step where the run will go on from it."""

    def __init__(self, save_at_end: bool) -> None:
        self.save_at_end = save_at_end
        self.lrs: list[float] = []
        self.losses: dict[int, float] = {}

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      **kwargs: Any) -> None:
        del args, state, control
        optimizer = kwargs.get("optimizer")
        if optimizer is not None:
            self.lrs.append(float(optimizer.param_groups[0]["lr"]))

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        del args, kwargs
        if self.save_at_end and state.global_step >= state.max_steps:
            control.should_save = True

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        del args, control, kwargs
        if logs and "loss" in logs:
            self.losses[state.global_step] = float(logs["loss"])


class TrainerRun(Ledger):
    """One run through the user's trainer (``seam.Run``; its bookkeeping is ``seam.Ledger``'s)."""

    def __init__(self, owner: TrainerRunner, task: Task, setting: Setting, *, seed: int,
                 weights: dict[str, torch.Tensor], folder: Path | None,
                 optimizer_state: dict[str, Any] | None = None) -> None:
        super().__init__(setting, task.higher_is_better)
        self.owner, self.task, self.seed = owner, task, seed
        self.start_weights, self.start_optimizer = weights, optimizer_state
        self.folder = folder if folder is not None else Path(tempfile.mkdtemp(prefix="gradpilot-run-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.checkpoint: Path | None = None  # where the run stands, a trainer's checkpoint-N folder
        self._losses: dict[int, float] = {}
        self.trainer: Any = None  # the last trainer made

    @property
    def losses(self) -> list[float | None]:
        """The loss the trainer logged at each step (None at steps it did not log)."""
        return [self._losses.get(step + 1) for step in range(self.steps)]

    def advance(self, to_step: int) -> None:
        """Train on in the user's trainer at the setting's schedule to ``to_step`` optimizer steps."""
        if to_step <= self.steps:
            return
        steps = self._train(self.setting.schedule, to_step, self.folder / "trunk", save=True)
        self.lrs += steps.lrs
        self._losses.update(steps.losses)
        self.steps = to_step
        self._keep(self.folder / "trunk" / f"checkpoint-{to_step}")

    def branch(self, decay: int, decay_type: DecayType = "linear", *, keep: bool = False,
               weights: bool = False) -> Branch:
        """From the run's checkpoint, the LR decayed over ``decay`` steps in the trainer, then its ``evaluate()``;
        the run stays at its checkpoint unless ``keep``."""
        schedule = self.setting.schedule.decayed_from(self.steps, decay, decay_type)
        where = self.folder / ("final" if keep else "branch")
        steps = self._train(schedule, self.steps + decay, where, save=False) if decay else _Steps(False)
        score = self.evaluate()
        made = Branch(self.steps, decay, score, schedule, tuple(steps.lrs),
                      tuple(steps.losses.get(self.steps + i + 1, math.nan) for i in range(decay)),
                      self.weights() if weights else None)
        if not keep:
            shutil.rmtree(where, ignore_errors=True)
            self.trainer = None  # its model is the branch's: the run is at its checkpoint
        return made

    def _current(self) -> Any:
        """A trainer whose model holds the run as it stands: the last one trained, else one made and given the
        run's weights (its checkpoint's, or its start weights)."""
        if self.trainer is None:
            trainer = self._trainer(self.setting.schedule, max(1, self.steps), self.folder / "eval")
            state = self.start_weights if self.checkpoint is None else read_start(self.checkpoint,
                                                                                  trainer.model).weights
            load_weights(trainer.model, state)
        return self.trainer

    def evaluate(self) -> Score:
        """The trainer's own ``evaluate()``: its ``metric_for_best_model`` where it names one, else the loss."""
        trainer = self._current()
        with self.spending("validation", validations=1):
            metrics = trainer.evaluate()
        key = self.owner.metric
        name = "eval_loss" if not key else key if key.startswith("eval_") else f"eval_{key}"
        if name not in metrics:
            raise GradpilotError(f"the trainer's evaluate() gave no {name} (it gave {', '.join(sorted(metrics))}): "
                                 "give the model its labels (label_names) or compute_metrics, or set "
                                 "metric_for_best_model to a metric it reports")
        return self.score(float(metrics[name]), float(metrics.get("eval_loss", math.nan)),
                          has_loss="eval_loss" in metrics)

    def weights(self) -> dict[str, torch.Tensor]:
        return trainable_state(self._current().model)

    def save(self, path: Path) -> None:
        """The run's checkpoint (a trainer's checkpoint folder) moved to ``path``, a folder, with the run's record
        (``seam.RECORD``); the run goes on from there (one copy on disk, not two)."""
        if self.checkpoint is None:
            raise GradpilotError("a run that has not trained has nothing to save")
        with self.spending("io"):
            if path.exists():
                shutil.rmtree(path)
            shutil.move(str(self.checkpoint), str(path))
            self.checkpoint = path
            self.record(self.losses).write(path)

    def load(self, path: Path) -> None:
        """Go on from a saved run: the trainer resumes from that checkpoint folder."""
        record = RunRecord.read(path)
        self.restore(record)
        self.checkpoint = path
        self._losses = {i + 1: v for i, v in enumerate(record.losses) if v is not None}

    def _keep(self, checkpoint: Path) -> None:
        """The run now stands at ``checkpoint``; the one before is not needed any more (unless saved elsewhere)."""
        old = self.checkpoint
        self.checkpoint = checkpoint
        if old is not None and old.parent == checkpoint.parent and old != checkpoint:
            shutil.rmtree(old, ignore_errors=True)

    def _trainer(self, schedule: Wsd, max_steps: int, output: Path) -> Any:
        """A trainer from ``make_trainer`` for this stretch: the plan so far in ``TrainingArguments`` names, the
        outputs under this run's folder, and no evaluation or checkpoint of its own in between."""
        s = self.setting
        plan = {"learning_rate": s.lr, "per_device_train_batch_size": s.micro_batch,
                "gradient_accumulation_steps": s.accumulation, "max_steps": max_steps,
                **schedule.training_arguments()}
        trainer = self.owner.make(plan)
        if not isinstance(trainer, Trainer):
            raise GradpilotError(f"make_trainer() returned {type(trainer).__name__}, not a transformers.Trainer")
        for name, value in _OWN.items():  # set after __post_init__: run again, it would reset accelerate's state
            setattr(trainer.args, name, value)
        trainer.args.output_dir, trainer.args.seed = str(output), self.seed
        self.trainer = trainer
        return trainer

    def _train(self, schedule: Wsd, max_steps: int, output: Path, *, save: bool) -> _Steps:
        """One ``train()`` call, resuming from the run's checkpoint (or from its start weights), to ``max_steps``."""
        trainer = self._trainer(schedule, max_steps, output)
        steps = _Steps(save_at_end=save)
        trainer.add_callback(steps)
        if self.checkpoint is None:
            load_weights(trainer.model, self.start_weights)
            if self.start_optimizer is not None:
                trainer.add_callback(_StartFrom(self.start_optimizer))
        with self.spending("training", items=(max_steps - self.steps) * self.setting.batch):
            trainer.train(resume_from_checkpoint=str(self.checkpoint) if self.checkpoint is not None else None)
        return steps


_OWN = {"save_strategy": SaveStrategy.NO, "eval_strategy": IntervalStrategy.NO, "load_best_model_at_end": False}
# a run's own: it saves where a run goes on from and evaluates where a decision needs it, not on the trainer's
# schedule; the user's logging, callbacks, precision and optimizer settings are left as they are
