"""Early stopping on a validation metric: a pure rule over the metric's history."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gradpilot._direction import better
from gradpilot.errors import GradpilotError

Mode = Literal["min", "max"]  # the direction of a metric: lower is better, or higher


@dataclass(frozen=True)
class EarlyStopping:
    """Stop once the metric has not improved by more than ``min_delta`` for ``patience`` epochs.

    ``mode`` is ``"min"`` or ``"max"``; None takes the direction of the metric being watched.
    """

    patience: int = 3
    min_delta: float = 0.0
    mode: Mode | None = None

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise GradpilotError(f"patience must be at least 1, got patience={self.patience}")
        if self.min_delta < 0:
            raise GradpilotError(f"min_delta must be non-negative, got min_delta={self.min_delta}")
        if self.mode not in (None, "min", "max"):
            raise GradpilotError(f"mode must be 'min' or 'max', got mode={self.mode!r}")

    def best_epoch(self, history: Sequence[float], mode: Mode = "min") -> int | None:
        """Index of the best value, counting only improvements larger than ``min_delta``; NaN never wins."""
        higher = (self.mode or mode) == "max"
        best_i: int | None = None
        for i, value in enumerate(history):
            if math.isfinite(value) and (best_i is None or better(value, history[best_i], higher_is_better=higher,
                                                                    margin=self.min_delta)):
                best_i = i
        return best_i

    def should_stop(self, history: Sequence[float], mode: Mode = "min") -> bool:
        """True when the last ``patience`` epochs brought no improvement over the best before them."""
        best = self.best_epoch(history, mode)
        since = len(history) - 1 - (best if best is not None else -1)
        return since >= self.patience
