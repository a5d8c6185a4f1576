"""tune's plan in the names users already use — Hugging Face ``TrainingArguments`` — and the YAML file it is
written to, a comment above each value saying why it was chosen."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from gradpilot._files import write_atomic
from gradpilot.errors import GradpilotError
from gradpilot.train.plan import optimizer_arguments
from gradpilot.train.task import Task
from gradpilot.tuning.state import Chosen, Decided, Stage, Trained

FIXABLE = ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
           "lr_scheduler_type")
ALIASES = {"lr": "learning_rate", "batch_size": "per_device_train_batch_size",
           "accumulation": "gradient_accumulation_steps", "accumulation_steps": "gradient_accumulation_steps",
           "epochs": "num_train_epochs", "scheduler": "lr_scheduler_type"}
SCHEDULER_NAMES = ("constant", "constant_with_warmup", "linear", "cosine_with_min_lr",
                   "warmup_stable_decay")  # transformers' names
def parse_fixed(fixed: dict[str, Any]) -> dict[str, Any]:
    """Fixed values under their plan names, checked: a name that is not a plan field, or a bad value, is refused."""
    out: dict[str, Any] = {}
    for name, value in fixed.items():
        key = ALIASES.get(name, name)
        if key not in FIXABLE:
            raise GradpilotError(f"cannot fix {name!r}: it is not a plan field; fix one of {', '.join(FIXABLE)} "
                                 f"(or {', '.join(ALIASES)})")
        out[key] = _checked(key, value)
    return out


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


def plan(decided: Decided, task: Task, stages: Sequence[Stage]) -> tuple[dict[str, Any], dict[str, str]]:
    """The plan as ``TrainingArguments`` keyword arguments, and why each value (from the stage that set it)."""
    why = {s.name: s.why for s in stages}
    chosen: Chosen = decided.need("lr_search")
    trained: Trained = decided.need("schedule")
    out: dict[str, Any] = {
        "learning_rate": float(chosen.learning_rate),
        "per_device_train_batch_size": int(chosen.micro_batch),
        "gradient_accumulation_steps": int(chosen.accumulation),
        "num_train_epochs": int(trained.num_train_epochs),
        **trained.training_arguments(),
    }
    kwargs = out["lr_scheduler_kwargs"]
    reasons = {
        "learning_rate": f"{why.get('lr_range', 'learning_rate is fixed')}. {why['lr_search']}",
        "per_device_train_batch_size": why["batch"],
        "gradient_accumulation_steps": why["accumulation"],
        "num_train_epochs": why["epochs"],
        "lr_scheduler_type": why["schedule"],
        "lr_scheduler_kwargs": ("the decay the winning branch trained: the stable and decay phases in steps"
                                if "num_decay_steps" in kwargs else "the schedule's floor" if kwargs
                                else "the schedule takes none"),
        "warmup_steps": "linear warmup from 0, because the batch (and so the LR) grew" if out["warmup_steps"]
        else "no warmup: the LR was found stable at this batch",
    }
    optim, optim_reason = optimizer_arguments(task)
    out.update(optim)
    reasons.update({"optim": optim_reason, "weight_decay": optim_reason})
    return out, reasons


def write_yaml(plan: dict[str, Any], reasons: dict[str, str], path: Path, *, header: str) -> None:
    """One ``key: value`` per plan field, each under a comment block saying why; loads with ``yaml.safe_load``."""
    lines = [f"# {header}", "# Load with: TrainingArguments(output_dir=..., **yaml.safe_load(open('plan.yaml')))", ""]
    for key, value in plan.items():
        lines += [f"# {line}" for line in _wrap(reasons.get(key, ""))]
        lines.append(yaml.safe_dump({key: value}, default_flow_style=False, width=10**6).strip())
    write_atomic(path, "\n".join(lines) + "\n")


def _wrap(text: str, width: int = 100) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines
