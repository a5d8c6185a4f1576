"""The plan values a tune keeps as given (``tune(fixed=...)``, ``--fix``): checked once, held typed. Pure Python,
so the command line refuses a bad ``--fix`` before it loads torch or the task."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gradpilot.errors import GradpilotError

# plan name -> the field of ``Fixed`` that holds it
FIELDS = {"learning_rate": "learning_rate", "per_device_train_batch_size": "batch_size",
          "gradient_accumulation_steps": "accumulation", "num_train_epochs": "epochs",
          "lr_scheduler_type": "scheduler"}
FIXABLE = tuple(FIELDS)
ALIASES = {"lr": "learning_rate", "batch_size": "per_device_train_batch_size",
           "accumulation": "gradient_accumulation_steps", "accumulation_steps": "gradient_accumulation_steps",
           "epochs": "num_train_epochs", "scheduler": "lr_scheduler_type"}
SCHEDULER_NAMES = ("constant", "constant_with_warmup", "linear", "cosine_with_min_lr",
                   "warmup_stable_decay")  # transformers' names a fixed schedule may take
CONSTANT = ("constant", "constant_with_warmup")  # schedules that never decay: a branch is a validation
FRESH = ("linear", "cosine_with_min_lr")  # schedules that decay from the start: one run from the initial weights


@dataclass(frozen=True)
class Fixed:
    """The plan values to keep (None: tune chooses it): the LR, the micro-batch, the accumulation steps, the
    epochs and the schedule by its transformers name."""

    learning_rate: float | None = None
    batch_size: int | None = None
    accumulation: int | None = None
    epochs: int | None = None
    scheduler: str | None = None

    @staticmethod
    def parse(given: Mapping[str, Any]) -> Fixed:
        """Fixed values by their plan names or short names, checked: a name that is not a plan field, or a bad
        value, is refused in one line."""
        values: dict[str, Any] = {}
        for name, value in given.items():
            key = ALIASES.get(name, name)
            if key not in FIELDS:
                raise GradpilotError(f"cannot fix {name!r}: it is not a plan field; fix one of {', '.join(FIXABLE)} "
                                     f"(or {', '.join(ALIASES)})")
            values[FIELDS[key]] = _checked(key, value)
        return Fixed(**values)

    def names(self) -> dict[str, Any]:
        """The fixed values by their plan names (what tune's settings record)."""
        return {plan: getattr(self, field) for plan, field in FIELDS.items() if getattr(self, field) is not None}

    @property
    def constant(self) -> bool:
        """A fixed schedule that never decays."""
        return self.scheduler in CONSTANT

    @property
    def fresh(self) -> bool:
        """A fixed schedule that decays from the start (the trunk cannot go on from the search)."""
        return self.scheduler in FRESH


def _checked(key: str, value: Any) -> Any:
    if key == "lr_scheduler_type":
        if value not in SCHEDULER_NAMES:
            raise GradpilotError(f"lr_scheduler_type must be one of {', '.join(SCHEDULER_NAMES)}, got {value!r}")
        return value
    try:
        number = float(value) if key == "learning_rate" else int(value)
    except (TypeError, ValueError):
        raise GradpilotError(f"{key} must be a {'number' if key == 'learning_rate' else 'whole number'}, "
                             f"got {value!r}") from None
    if key != "learning_rate" and float(value) != number:
        raise GradpilotError(f"{key} must be a whole number, got {value!r}")
    if not 0 < number < math.inf:
        raise GradpilotError(f"{key} must be a positive finite number, got {value!r}")
    return number
