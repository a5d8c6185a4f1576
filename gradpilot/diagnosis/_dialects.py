"""Remedies in the words of the tool that wrote the log: a Hugging Face log gets ``TrainingArguments`` names
(gradpilot's own plan names), a Lightning log the argument of ``Trainer`` or of the optimizer to change."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradpilot.diagnosis.findings import Diagnosis, Finding

# plan name -> (Lightning's name for it, how to say "set it to {value}")
LIGHTNING: dict[str, tuple[str, str]] = {
    "learning_rate": ("optimizer.lr", "the optimizer's lr in configure_optimizers → {value}"),
    "num_train_epochs": ("Trainer.max_epochs", "Trainer(max_epochs={value})"),
    "max_steps": ("Trainer.max_steps", "Trainer(max_steps={value})"),
    "lr_scheduler_type": ("lr_scheduler", "return a torch.optim.lr_scheduler.CosineAnnealingLR from "
                                           "configure_optimizers"),
}
LIGHTNING_TEXT = (("clip gradients (max_grad_norm=1.0)", "clip gradients (Trainer(gradient_clip_val=1.0))"),)


def speak(diagnosis: Diagnosis, tool: str) -> Diagnosis:
    """``diagnosis`` with every remedy named for ``tool`` ("lightning"; anything else keeps the plan names)."""
    if tool != "lightning":
        return diagnosis
    return dataclasses.replace(diagnosis, findings=tuple(_lightning(f) for f in diagnosis.findings))


def _lightning(finding: Finding) -> Finding:
    remedy: dict[str, Any] = {}
    said = []
    for key, value in finding.remedy.items():
        name, how = LIGHTNING.get(key, (key, f"{key}={{value}}"))
        remedy[name] = value
        said.append(how.format(value=value))
    advice = finding.advice
    for plan_words, lightning_words in LIGHTNING_TEXT:
        advice = advice.replace(plan_words, lightning_words)
    if said:
        advice = f"{advice} — in Lightning: {'; '.join(said)}"
    return dataclasses.replace(finding, remedy=remedy, advice=advice)
