"""A run's curves in one shape, whatever wrote them: gradpilot's fit, or a log file read by
``gradpilot.diagnosis.logs``.

NumPy only: diagnosis never imports torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Series:
    """Values logged at steps (or epochs), in step order."""

    steps: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class History:
    """A training run: train loss and LR per logged step, validation loss and metric per evaluation."""

    train_loss: Series
    val_loss: Series | None = None
    val_metric: Series | None = None
    metric_name: str | None = None
    higher_is_better: bool = True
    lr: Series | None = None
    epoch_steps: tuple[int, ...] = ()
    source: str = ""
    val_epochs: np.ndarray | None = None  # epochs completed at each validation point, when the log says
    warnings: tuple[str, ...] = ()  # what the reader skipped or could not trust (a cut last line, ...)
    tool: str = ""  # what wrote the log, where it can tell: "transformers", "lightning", "keras"
    metric_direction: str = ""  # how higher_is_better is known: "name", "loss", "given", "unknown" ("": no metric)

    @property
    def direction_known(self) -> bool:
        """Whether the metric's direction is known (by its name, by moving with the loss, or as given)."""
        return self.val_metric is not None and self.metric_direction != "unknown"

    def directed(self, higher_is_better: bool) -> History:
        """This history with the metric's direction as the user gives it."""
        import dataclasses

        return dataclasses.replace(self, higher_is_better=higher_is_better,
                                   metric_direction="given" if self.val_metric is not None else "")

    @classmethod
    def from_fit(cls, result: Any, *, metric_name: str | None = None, higher_is_better: bool = True) -> History:
        """The history of a ``gradpilot.fit`` run (a ``FitResult``)."""
        steps = np.arange(1, len(result.train_losses) + 1)
        at = np.array(result.epoch_steps[: len(result.val_losses)])
        has_metric = metric_name is not None and len(result.val_metrics) == len(at)
        return cls(
            train_loss=Series(steps, np.array(result.train_losses, float)),
            val_loss=Series(at, np.array(result.val_losses, float)) if len(at) else None,
            val_metric=Series(at, np.array(result.val_metrics, float)) if has_metric else None,
            metric_name=metric_name if has_metric else None,
            higher_is_better=higher_is_better,
            metric_direction="given" if has_metric else "",
            lr=Series(steps, np.array(result.lrs, float)) if result.lrs else None,
            epoch_steps=tuple(result.epoch_steps),
            source="gradpilot.fit",
            val_epochs=np.arange(1, len(at) + 1, dtype=float) if len(at) else None,
        )
