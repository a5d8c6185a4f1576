"""gradpilot on a Hugging Face ``Trainer``: the range test on the trainer's own pieces, and a callback that
watches the run (and, with ``autopilot=True``, steers it through the trainer's own means).

    from gradpilot.integrations.transformers import GradpilotCallback, find_lr
    result = find_lr(trainer)                                   # model, optimizer, data, loss: the trainer's
    trainer.add_callback(GradpilotCallback(autopilot=True))     # gradpilot-diagnosis.json in output_dir

Needs the ``transformers`` extra: ``pip install 'gradpilot[transformers]'``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from gradpilot import lr_finder
from gradpilot._state import Snapshot
from gradpilot.errors import GradpilotError
from gradpilot.logs import hidden_nan
from gradpilot.monitor import Monitor, log_finding, steer
from gradpilot.task import Task

log = logging.getLogger(__name__)
DIAGNOSIS_FILE = "gradpilot-diagnosis.json"


def find_lr(trainer: Trainer, **kwargs: Any) -> lr_finder.LRFinderResult:
    """The LR range test on ``trainer``'s model, with the optimizer its arguments make (type, betas, weight
    decay, parameter groups), its train dataloader (collator, batch size), its gradient accumulation and its
    ``compute_loss``. The model, the trainer's optimizer and its state are left as they were. ``kwargs`` go
    to ``gradpilot.find_lr`` (``num_steps``, ``start_lr``, ``end_lr``, ``rule``, ...)."""
    if not isinstance(trainer, Trainer):
        raise GradpilotError(f"find_lr needs a transformers.Trainer, got {type(trainer).__name__}")
    loader = trainer.get_train_dataloader()
    kept = trainer.optimizer
    trainer.optimizer = None
    try:
        optimizer = trainer.create_optimizer()
    finally:
        trainer.optimizer = kept

    def step(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        loss = trainer.compute_loss(model, batch)
        return loss[0] if isinstance(loss, tuple) else loss

    kwargs.setdefault("accumulation_steps", trainer.args.gradient_accumulation_steps)
    kwargs.setdefault("device", trainer.args.device)
    if trainer.model is None:
        raise GradpilotError("the trainer has no model: give Trainer(model=...) or model_init")
    return lr_finder.find_lr(trainer.model, optimizer, train_loader=loader, step_fn=step, **kwargs)


def task_from_trainer(trainer: Trainer, name: str = "trainer") -> Task:
    """The ``Task`` ``gradpilot tune`` works on for a ``make_trainer(plan)`` file: the trainer's model, train
    and eval datasets, data collator, ``compute_loss`` (the loss every stage trains on and validates with),
    the optimizer its arguments make (with its weight-decay groups), and its LR, batch size and epochs. The
    validation metric is the eval loss."""
    if not isinstance(trainer, Trainer):
        raise GradpilotError(f"make_trainer() returned {type(trainer).__name__}, not a transformers.Trainer")
    if trainer.model is None or trainer.train_dataset is None or trainer.eval_dataset is None:
        raise GradpilotError("tune needs the trainer's model, train_dataset and eval_dataset: give all three")
    if isinstance(trainer.eval_dataset, dict):
        raise GradpilotError("tune validates on one eval_dataset: give one, not a dict of them")
    args = trainer.args

    def step(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        loss = trainer.compute_loss(model, batch)
        return loss[0] if isinstance(loss, tuple) else loss

    return Task(model=trainer.model, train_data=trainer.train_dataset, loss_fn=None, val_data=trainer.eval_dataset,
                higher_is_better=False, optimizer=_optimizer_factory(trainer), lr=args.learning_rate,
                batch_size=args.per_device_train_batch_size, epochs=max(1, math.ceil(args.num_train_epochs)),
                name=name, step_fn=step, collate_fn=trainer.data_collator,
                max_grad_norm=args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else None)


def _optimizer_factory(trainer: Trainer) -> Callable[[Iterable[torch.nn.Parameter], float], torch.optim.Optimizer]:
    """Optimizers as the trainer makes them: its class and settings, weight decay on its decay parameters only."""
    assert trainer.model is not None
    cls, settings = Trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)  # type: ignore[arg-type]
    decay = set(trainer.get_decay_parameter_names(trainer.model))
    names = {id(p): n for n, p in trainer.model.named_parameters()}

    def make(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
        params = list(params)
        decayed = [p for p in params if names.get(id(p)) in decay]
        groups = [{"params": decayed, "weight_decay": trainer.args.weight_decay},
                  {"params": [p for p in params if names.get(id(p)) not in decay], "weight_decay": 0.0}]
        made: torch.optim.Optimizer = cls([g for g in groups if g["params"]], **{**settings, "lr": lr})
        return made

    return make


class GradpilotCallback(TrainerCallback):
    """Feeds gradpilot's monitor from the trainer's own logs (``loss``, ``learning_rate``, ``grad_norm``,
    ``eval_loss``: values the trainer already brought to the host, so no sync is added), logs each finding
    as it appears and writes ``gradpilot-diagnosis.json`` (the ``gradpilot diagnose --json`` shape, with
    what the autopilot did) into ``output_dir`` when training ends.

    With ``autopilot=True`` it acts as ``gradpilot.fit``'s autopilot does: on oscillation it lowers the LR
    (the optimizer's param groups and the scheduler's base LRs); on NaN or divergence it puts back the last
    state that checked clean and lowers the LR more; on overfitting it stops training
    (``control.should_training_stop``; the best checkpoint comes back with ``load_best_model_at_end=True``).
    The trainer's loss of 0.0 where its ``logging_nan_inf_filter`` hid a NaN is read as the NaN it was.
    """

    def __init__(self, autopilot: bool = False, *, check_every: int = 5) -> None:
        self.monitor = Monitor(check_every=check_every, autopilot=autopilot, on_finding=log_finding)
        self.good = Snapshot()
        self.output: Path | None = None

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        step = state.global_step
        if "loss" in logs:
            new = self.monitor.update(step, _true_loss(logs), logs.get("learning_rate"))
            if self.monitor.autopilot:
                model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
                if model is not None and optimizer is not None:
                    steer(new, self.monitor, self.good, step, model, optimizer, kwargs.get("lr_scheduler"))
        if "eval_loss" in logs:
            overfit = self.monitor.end_epoch(step, float(logs["eval_loss"]))
            if self.monitor.autopilot and overfit:
                control.should_training_stop = True
                kept = " (the best checkpoint is loaded at the end)" if args.load_best_model_at_end else \
                    " (set load_best_model_at_end=True to get the best weights back)"
                self.monitor.record(step, "overfitting", f"stopped training: {overfit[0].evidence}{kept}")

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,  # noqa: ARG002
                     **kwargs: Any) -> None:  # noqa: ARG002 (the signature is TrainerCallback's)
        if self.monitor.steps:
            folder = Path(args.output_dir or ".")
            self.output = self.monitor.write_json(folder / DIAGNOSIS_FILE, "transformers.Trainer (gradpilot callback)")



def _true_loss(logs: dict[str, float]) -> float:
    """The logged loss, or NaN where the trainer's NaN filter logged 0.0 over a NaN gradient norm."""
    return math.nan if hidden_nan(logs["loss"], logs.get("grad_norm")) else float(logs["loss"])
