"""What a diagnosis says: its findings (each with evidence, a remedy under the plan's names, and advice) and
the verdict on the learning rate. The detectors that make them are in ``gradpilot.diagnosis.detectors``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from gradpilot._files import json_safe
from gradpilot.diagnosis._run_shape import RunShape
from gradpilot.errors import GradpilotError

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


QUIET = frozenset({"healthy", "insufficient_data"})  # kinds that are no trouble
# kinds that say how the run could do better, not that it went wrong: they fail only under ``any`` or by name
ADVICE = frozenset({"underfitting", "slow_convergence", "metric_disagrees"})


@dataclass(frozen=True)
class FailOn:
    """Which findings are trouble enough to fail on (exit 1, stop the job): ``sure`` problems (the default: a
    hint never fails a run, nor advice such as "train longer"), ``any`` finding, or those of the kinds named
    (``nan,divergence``)."""

    level: str = "sure"
    kinds: frozenset[str] = frozenset()

    @staticmethod
    def parse(text: str) -> FailOn:
        words = {w.strip() for w in text.split(",") if w.strip()}
        if words in ({"sure"}, {"any"}):
            return FailOn(words.pop())
        unknown = words - (set(KINDS) - QUIET)  # healthy is no trouble to fail on
        if not words or unknown:
            raise GradpilotError(f"--fail-on takes 'sure', 'any' or finding kinds separated by commas "
                                 f"({', '.join(k for k in KINDS if k not in QUIET)}), got {text!r}")
        return FailOn("kinds", frozenset(words))

    def __call__(self, finding: Finding) -> bool:
        if finding.kind in QUIET:
            return False
        if self.level == "kinds":
            return finding.kind in self.kinds
        return self.level == "any" or (finding.sure and finding.kind not in ADVICE)

    def code(self, diagnosis: Diagnosis) -> int:
        """The exit code a CI reads: 1 where a finding fails, else 0 (healthy, or hints only)."""
        return 1 if any(self(f) for f in diagnosis.findings) else 0
