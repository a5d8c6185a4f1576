"""tune's plan in the names users already use — Hugging Face ``TrainingArguments`` — and the YAML file it is
written to, a comment above each value saying why it was chosen."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from gradpilot._files import write_atomic
from gradpilot.train.plan import optimizer_arguments
from gradpilot.train.task import Task
from gradpilot.tuning.state import Assumed, Chosen, Decided, Stage, Trained


def plan(decided: Decided, task: Task, stages: Sequence[Stage],
         assumed: Assumed) -> tuple[dict[str, Any], dict[str, str]]:
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
        "lr_scheduler_kwargs": (f"the decay the winning branch trained; {assumed.words()}: on a run of another "
                                "length the decay is still its last num_decay_steps (transformers derives the "
                                "stable phase from the run's length)" if "num_decay_steps" in kwargs
                                else "the schedule's floor" if kwargs else "the schedule takes none"),
        "warmup_steps": "linear warmup from 0, because the batch (and so the LR) grew" if out["warmup_steps"]
        else "no warmup: the LR was found stable at this batch",
    }
    out.update(_cadence(task, assumed))
    reasons.update({name: f"the task's {name} in optimizer steps, rescaled to the plan's batch so it comes as often "
                    "in an epoch" for name in task.cadence.steps})
    optim, optim_reason = optimizer_arguments(task)
    out.update(optim)
    out["max_grad_norm"] = float(task.max_grad_norm or 0.0)
    reasons.update({"optim": optim_reason, "weight_decay": optim_reason,
                    "max_grad_norm": "as the task clips" if task.max_grad_norm else
                    "0: no clipping, as the task trained (the Trainer's default would clip at 1.0)"})
    return out, reasons


def _cadence(task: Task, assumed: Assumed) -> dict[str, int]:
    """The trainer's settings counted in optimizer steps (eval_steps, save_steps, logging_steps), rescaled where the
    plan's batch makes an epoch of another number of steps than the task's: each keeps its place in an epoch."""
    from gradpilot.tuning.budget import steps_per_epoch

    own = steps_per_epoch(assumed.train_items, task.batch_size, task.accumulation)
    if not task.cadence.steps or own == assumed.steps_per_epoch:
        return {}
    return {name: max(1, round(value * assumed.steps_per_epoch / own)) for name, value in task.cadence.steps.items()}


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
