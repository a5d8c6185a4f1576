"""What a diagnosis says: its findings (each with evidence, a remedy under the plan's names, and advice) and
the verdict on the learning rate. The detectors that make them are in ``gradpilot.diagnosis.detectors``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from gradpilot._files import json_safe
from gradpilot.diagnosis._run_shape import RunShape

KINDS = ("divergence", "nan", "oscillation", "plateau", "slow_convergence", "overfitting", "metric_disagrees",
         "underfitting", "healthy", "insufficient_data")
Direction = Literal["lower", "raise"]


@dataclass(frozen=True)
class Finding:
    """One thing the run shows, where (``start``–``end`` in ``unit``), the numbers behind it, and what to change.

    ``remedy`` holds the concrete new values under the plan's names (``learning_rate``, ``num_train_epochs``,
    ``lr_scheduler_type``, ...); ``advice`` says the same in words. ``lr`` is the way the finding says the LR
    must move, set only where that sign has proved right on runs it was not calibrated on; the verdict folds
    over it.
    """

    kind: str
    start: float
    end: float
    evidence: str
    confidence: float
    remedy: dict[str, Any] = field(default_factory=dict)
    advice: str = ""
    unit: str = "step"
    lr: Direction | None = None
    sure: bool = True

    def to_json(self) -> dict[str, Any]:
        """The JSON shape ``gradpilot diagnose --json`` prints."""
        return {"kind": self.kind, "start": self.start, "end": self.end, "unit": self.unit, "evidence": self.evidence,
                "confidence": round(self.confidence, 3), "remedy": self.remedy, "advice": self.advice,
                "lr": self.lr, "sure": self.sure}


@dataclass(frozen=True)
class Diagnosis:
    """All findings, and the verdict on the learning rate: ``too high``, ``too low``, ``about right`` or ``unknown``."""

    findings: tuple[Finding, ...]
    lr_verdict: str
    lr_reason: str
    assumed: tuple[str, ...] = ()  # what the reading took for granted (a metric's direction), said first

    @property
    def kinds(self) -> set[str]:
        """The kinds found."""
        return {f.kind for f in self.findings}

    def to_json(self) -> dict[str, Any]:
        """``{"findings": [...], "learning_rate": {"verdict", "reason"}}``."""
        out: dict[str, Any] = json_safe({"assumed": list(self.assumed),
                                         "findings": [f.to_json() for f in self.findings],
                                         "learning_rate": {"verdict": self.lr_verdict, "reason": self.lr_reason}})
        return out


def fmt_lr(lr: float) -> str:
    return f"{lr:.2g}"


def lr_remedy(shape: RunShape, factor: float) -> tuple[dict[str, Any], str]:
    """The remedy that multiplies the run's peak LR by ``factor``, and its words."""
    peak = shape.peak_lr
    if peak is None:
        verb = "lower" if factor < 1 else "raise"
        return {}, f"{verb} the learning rate about {max(factor, 1 / factor):.0f}× (the log has no learning rate)"
    new = float(f"{peak * factor:.2g}")
    return {"learning_rate": new}, f"lr {fmt_lr(peak)} → {fmt_lr(new)}"
