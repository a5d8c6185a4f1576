"""A training problem described in one object, and the Python files users write them in."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from gradpilot.errors import GradpilotError

OptimizerFactory = Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
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
class Task:
    """A training problem: model, data, loss, metric, optimizer and budget.

    ``train_data``/``val_data`` are datasets (batched with ``batch_size``) or ready data loaders.
    ``metric(outputs, targets) -> float`` is averaged over validation batches; None means the loss.
    """

    model: nn.Module
    train_data: Dataset[Any] | DataLoader[Any]
    loss_fn: Callable[[Any, Any], torch.Tensor]
    val_data: Dataset[Any] | DataLoader[Any] | None = None
    metric: Callable[[Any, Any], float] | None = None
    higher_is_better: bool = False
    optimizer: str | OptimizerFactory = "adamw"
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 1
    name: str = "task"

    def make_optimizer(self, lr: float | None = None) -> torch.optim.Optimizer:
        """A fresh optimizer over the model's trainable parameters at ``lr`` (default: the task's)."""
        lr = self.lr if lr is None else lr
        params = [p for p in self.model.parameters() if p.requires_grad]
        if callable(self.optimizer):
            return self.optimizer(params, lr)
        return build_optimizer(self.optimizer, params, lr, **self.optimizer_kwargs)

    def train_loader(self, seed: int = 0) -> DataLoader[Any]:
        """Training batches, shuffled reproducibly by ``seed`` when the task holds a dataset."""
        if isinstance(self.train_data, DataLoader):
            return self.train_data
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(self.train_data, batch_size=self.batch_size, shuffle=True, generator=gen)

    def val_loader(self) -> DataLoader[Any] | None:
        """Validation batches in a fixed order, or None when the task has no validation data."""
        if self.val_data is None or isinstance(self.val_data, DataLoader):
            return self.val_data
        return DataLoader(self.val_data, batch_size=max(self.batch_size, 256))

    @property
    def optimizer_name(self) -> str:
        """The optimizer's name as gradpilot knows it ("sgd", "adamw", ...), or its class name."""
        if isinstance(self.optimizer, str):
            return self.optimizer.lower()
        return type(self.make_optimizer()).__name__.lower()


def build_optimizer(name: str, params: Iterable[nn.Parameter], lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """Build a torch optimizer by name; unknown names list the valid ones."""
    cls = OPTIMIZERS.get(name.lower())
    if cls is None:
        raise GradpilotError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)} or pass a factory")
    return cls(params, lr=lr, **kwargs)


def load_task(path: str | Path, seed: int = 0) -> Task:
    """Import a task file and call its ``task(seed)``; a missing file or function is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise GradpilotError(f"task file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"gradpilot_task_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise GradpilotError(f"{path} is not a Python file gradpilot can import")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise GradpilotError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, "task", None)
    if not callable(factory):
        raise GradpilotError(f"{path} defines no task() function: add `def task(seed: int = 0) -> gradpilot.Task`")
    result = factory(seed=seed)
    if not isinstance(result, Task):
        raise GradpilotError(f"task() in {path} returned {type(result).__name__}, not a gradpilot.Task")
    return result
