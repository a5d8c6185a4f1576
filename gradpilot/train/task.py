"""A training problem described in one object (``load_task`` in ``gradpilot.task_file`` reads the files users
write them in)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from gradpilot import _validate
from gradpilot.errors import GradpilotError, describe
from gradpilot.train.batches import check_trains
from gradpilot.train.data import SeededBatches
from gradpilot.train.distributed import world
from gradpilot.train.precision import check as check_precision
from gradpilot.train.seam import Run, Setting

OptimizerFactory = Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "adamax": torch.optim.Adamax,
}


@dataclass(frozen=True)
class Cadence:
    """How one run of the user's own trainer spends its time besides training: its validation passes and its
    checkpoint saves in one run (``validations`` None: one an epoch), and its settings counted in optimizer steps
    (``TrainingArguments``' ``eval_steps``, ``save_steps``, ``logging_steps``), which a plan at another batch
    rescales so that they keep their meaning."""

    validations: int | None = None
    saves: int = 0
    steps: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """A training problem: model, data, loss, metric, optimizer and budget.

    ``train_data``/``val_data`` are datasets (batched with ``batch_size``) or ready data loaders.
    ``accumulation`` micro-batches of ``batch_size`` make one optimizer step (the batch is their product).
    ``metric(outputs, targets) -> float`` is averaged over validation batches; None means the loss;
    ``metric_name`` names it where the task's own trainer computes it (``eval_accuracy``, ``val_acc``).
    """

    model: nn.Module
    train_data: Dataset[Any] | DataLoader[Any]
    loss_fn: Callable[[Any, Any], torch.Tensor] | None
    val_data: Dataset[Any] | DataLoader[Any] | None = None
    metric: Callable[[Any, Any], float] | None = None
    higher_is_better: bool = False
    optimizer: str | OptimizerFactory = "adamw"
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-3
    batch_size: int = 32
    accumulation: int = 1
    epochs: int = 1
    name: str = "task"
    step_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None  # (model, batch) -> loss, instead of loss_fn
    collate_fn: Callable[[list[Any]], Any] | None = None  # how items become a batch (default: torch's)
    max_grad_norm: float | None = None  # clip the gradient norm at every step of every run (None: no clipping)
    precision: str = "fp32"  # "bf16" or "fp16": every run's forward under autocast (fp16 with a loss scaler)
    runner: Runner | None = None  # what trains tune's runs: the user's own trainer (None: gradpilot's engine)
    metric_name: str | None = None  # the metric's name where it has no function here (the trainer's own)
    cadence: Cadence = field(default_factory=Cadence)  # a trainer's validations and saves a run

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise GradpilotError(f"Task.model must be a torch.nn.Module, got {type(self.model).__name__}")
        try:
            check_trains(self.model)
        except GradpilotError as exc:
            raise GradpilotError(f"Task.model: {exc}") from None
        if self.step_fn is None and not callable(self.loss_fn):
            raise GradpilotError(f"Task.loss_fn must be callable (e.g. nn.CrossEntropyLoss()), got {self.loss_fn!r}")
        for name, shape in {**_CALLABLES, "runner": "(task, setting, *, seed, weights) -> Run"}.items():
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise GradpilotError(f"Task.{name} must be callable{shape}, got {value!r}")
        if self.max_grad_norm is not None:
            _validate.positive_float("Task.max_grad_norm", self.max_grad_norm)
        check_precision(self.precision, "Task.precision")
        _validate.positive_float("Task.lr", self.lr)
        _validate.positive_int("Task.batch_size", self.batch_size)
        _validate.positive_int("Task.accumulation", self.accumulation)
        _validate.positive_int("Task.epochs", self.epochs)
        _check_optimizer(self.optimizer, self.optimizer_kwargs)
        for field_name in ("train_data", "val_data"):
            _check_data(field_name, getattr(self, field_name))

    def make_optimizer(self, lr: float | None = None) -> torch.optim.Optimizer:
        """A fresh optimizer over the model's trainable parameters at ``lr`` (default: the task's)."""
        lr = self.lr if lr is None else lr
        params = [p for p in self.model.parameters() if p.requires_grad]
        if callable(self.optimizer):
            try:
                made = self.optimizer(params, lr)
            except Exception as exc:
                raise GradpilotError(f"the task's optimizer factory failed: {describe(exc)}") from None
            if not isinstance(made, torch.optim.Optimizer):
                raise GradpilotError(f"the task's optimizer factory returned {type(made).__name__}, not an Optimizer")
            return made
        return build_optimizer(self.optimizer, params, lr, **self.optimizer_kwargs)

    def train_loader(self, seed: int = 0) -> DataLoader[Any]:
        """Training batches in gradpilot's one data order (``data.epoch_order``: each pass is the next epoch,
        shuffled by ``seed``) when the task holds a dataset; a ready DataLoader as it is."""
        if isinstance(self.train_data, DataLoader):
            return self.train_data
        sampler = SeededBatches(_length(self.train_data), self.batch_size, seed, *world())
        return DataLoader(self.train_data, batch_sampler=sampler, collate_fn=self.collate_fn or default_collate,
                          generator=torch.Generator().manual_seed(seed))

    def val_loader(self) -> DataLoader[Any] | None:
        """Validation batches in a fixed order, or None when the task has no validation data."""
        if self.val_data is None or isinstance(self.val_data, DataLoader):
            return self.val_data
        return DataLoader(self.val_data, batch_size=max(self.batch_size, 256),
                          collate_fn=self.collate_fn or default_collate)

    def dataset(self) -> tuple[Dataset[Any], Callable[[list[Any]], Any]]:
        """The training items and how they are batched: the dataset and the loader's ``collate_fn``."""
        if isinstance(self.train_data, DataLoader):
            return self.train_data.dataset, self.train_data.collate_fn
        return self.train_data, self.collate_fn or default_collate

    @property
    def batch(self) -> int:
        """Items per optimizer step: the micro-batch × the accumulation steps."""
        return self.batch_size * self.accumulation

    @property
    def metric_label(self) -> str:
        """What the validation score is called: the metric's name, or the validation loss."""
        if self.metric_name:
            return self.metric_name
        name = getattr(self.metric, "__name__", None)
        return "validation loss" if self.metric is None else str(name or "metric")

    @property
    def optimizer_name(self) -> str:
        """The optimizer's name as gradpilot knows it ("sgd", "adamw", ...), or its class name."""
        if isinstance(self.optimizer, str):
            return self.optimizer.lower()
        return type(self.make_optimizer()).__name__.lower()


class Runner(Protocol):
    """What makes runs of a task: the user's own trainer's (``gradpilot.integrations``), or gradpilot's engine
    (``run.local_run``). A run starts from ``weights`` (and ``optimizer_state``, to go on from a checkpoint) at
    ``setting``; ``seed`` fixes its data order; ``folder`` is where a trainer may keep its own files."""

    def __call__(self, task: Task, setting: Setting, *, seed: int, weights: dict[str, torch.Tensor],
                 optimizer_state: dict[str, Any] | None = None, folder: Path | None = None) -> Run: ...


def _length(data: Any) -> int:
    try:
        return len(data)
    except TypeError:
        raise GradpilotError("Task.train_data has no length (an iterable dataset): give a map-style Dataset, or "
                             "a DataLoader") from None


def build_optimizer(name: str, params: Iterable[nn.Parameter], lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """Build a torch optimizer by name; unknown names list the valid ones."""
    cls = OPTIMIZERS.get(name.lower())
    if cls is None:
        raise GradpilotError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)} or pass a factory")
    try:
        return cls(params, lr=lr, **kwargs)
    except (TypeError, ValueError) as exc:
        raise GradpilotError(f"optimizer {name!r} refused its options {kwargs}: {exc}") from None


_CALLABLES = {"step_fn": "(model, batch) -> loss", "collate_fn": "(items) -> batch",
              "metric": "(outputs, targets) -> float"}  # optional fields that must be callable when given


def _check_optimizer(optimizer: Any, kwargs: Any) -> None:
    if isinstance(optimizer, str):
        _validate.choice("Task.optimizer", optimizer.lower(), sorted(OPTIMIZERS))
    elif not callable(optimizer):
        raise GradpilotError("Task.optimizer must be a name or a factory (params, lr) -> Optimizer")
    if not isinstance(kwargs, dict):
        raise GradpilotError(f"Task.optimizer_kwargs must be a dict, got {type(kwargs).__name__}")


def _check_data(name: str, data: Any) -> None:
    if data is None:
        if name == "train_data":
            raise GradpilotError("Task.train_data is None: give a Dataset or a DataLoader")
        return
    try:
        n = len(data)
    except TypeError:
        return  # an iterable dataset: its length shows when it is read
    if n == 0:
        raise GradpilotError(f"Task.{name} is empty: give it at least one item")
