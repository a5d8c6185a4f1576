"""``fit``'s options (``FitConfig``), checked when made: nothing trains until every one is right."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from gradpilot import _validate
from gradpilot.errors import GradpilotError
from gradpilot.train.accumulation import NumItems
from gradpilot.train.batches import LossFn, StepFn
from gradpilot.train.data import loader_length
from gradpilot.train.early_stopping import EarlyStopping
from gradpilot.train.evaluation import Metric
from gradpilot.train.monitor import Monitor
from gradpilot.train.precision import check as check_precision


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
        if self.val_loader is not None and loader_length("val_loader", self.val_loader, required=False) == 0:
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
        """The direction of the validation metric, in early stopping's words."""
        return "max" if self.higher_is_better else "min"
