"""Watch a run while it trains: one call per step raises findings as they appear; with ``autopilot`` the
training loop applies the remedy (lower the LR, roll back a divergence, stop on overfitting)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradpilot._files import write_json
from gradpilot.diagnosis.detectors import (
    THRESHOLDS,
    Detector,
    Diagnosis,
    Finding,
    Thresholds,
    detect_divergence,
    detect_nan,
    detect_oscillation,
    detect_overfitting,
    diagnose,
    measure,
)
from gradpilot.diagnosis.history import History, Series
from gradpilot.errors import GradpilotError
from gradpilot.schedules import builders as schedules
from gradpilot.train.state import Snapshot

log = logging.getLogger(__name__)

LIVE_DETECTORS = (detect_nan, detect_divergence, detect_oscillation)


@dataclass(frozen=True)
class Action:
    """Something the autopilot did, and why."""

    step: int
    kind: str
    description: str


class Monitor:
    """Collects loss, LR and validation loss as training runs and checks them every ``check_every`` steps.

    ``update(step, loss, lr)`` once per optimizer step (``loss`` may stay a tensor: it is read only at checks,
    so there is no host sync per step), ``end_epoch(step, val_loss)`` after each validation. Both return
    the findings that are new. ``on_finding`` is called with each. With ``autopilot=True``, ``gradpilot.fit``
    acts on them. ``thresholds`` are the detectors' constants (``gradpilot.diagnosis.detectors.Thresholds``).
    """

    def __init__(self, *, check_every: int = 25, autopilot: bool = False,
                 on_finding: Callable[[Finding], None] | None = None, lr_factor_oscillation: float = 0.5,
                 lr_factor_divergence: float = 0.3, thresholds: Thresholds = THRESHOLDS) -> None:
        if check_every < 1:
            raise GradpilotError(f"check_every must be at least 1, got {check_every=}")
        factors = (("lr_factor_oscillation", lr_factor_oscillation), ("lr_factor_divergence", lr_factor_divergence))
        for name, value in factors:
            if not 0 < value < 1:
                raise GradpilotError(f"{name} must be between 0 and 1, got {value}")
        self.check_every = check_every
        self.thresholds = thresholds
        self.autopilot = autopilot
        self.on_finding = on_finding
        self.lr_factor_oscillation = lr_factor_oscillation
        self.lr_factor_divergence = lr_factor_divergence
        self.steps: list[int] = []
        self.losses: list[Any] = []
        self.lrs: list[float] = []
        self.val_steps: list[int] = []
        self.val_losses: list[float] = []
        self.findings: list[Finding] = []
        self.actions: list[Action] = []
        self._since = 0  # detectors look at the steps after the last action only
        self._raised: set[str] = set()
        self._floated = 0  # losses before this index are already floats

    def update(self, step: int, loss: float | torch.Tensor, lr: float | None = None) -> list[Finding]:
        """Record one optimizer step; every ``check_every`` steps run the live detectors."""
        self.steps.append(step)
        self.losses.append(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        self.lrs.append(float("nan") if lr is None else lr)
        if len(self.steps) % self.check_every:
            return []
        return self._check(LIVE_DETECTORS)

    def end_epoch(self, step: int, val_loss: float) -> list[Finding]:
        """Record a validation loss; check for overfitting."""
        self.val_steps.append(step)
        self.val_losses.append(val_loss)
        return self._check((detect_overfitting,))

    def history(self, since: int = 0) -> History:
        """The run so far as a ``History`` (from the ``since``-th recorded step)."""
        self._to_floats()
        values = np.array(self.losses[since:], float)
        steps = np.array(self.steps[since:], float)
        lrs = np.array(self.lrs[since:], float)
        val = Series(np.array(self.val_steps, float), np.array(self.val_losses, float)) if self.val_steps else None
        return History(Series(steps, values), val_loss=val,
                       lr=Series(steps, lrs) if np.isfinite(lrs).any() else None, source="monitor")

    def _to_floats(self) -> None:
        # read each recorded loss tensor once (one host sync), not at every check
        for i in range(self._floated, len(self.losses)):
            self.losses[i] = float(self.losses[i])
        self._floated = len(self.losses)

    def diagnosis(self) -> Diagnosis:
        """A full diagnosis of everything recorded so far."""
        return diagnose(self.history(), self.thresholds)

    def write_json(self, path: Path, source: str) -> Path:
        """The diagnosis of the whole run, in the ``gradpilot diagnose --json`` shape, plus the findings raised
        while it ran (``raised``) and the autopilot's actions."""
        report = {"source": source, "warnings": [], **self.diagnosis().to_json(),
                  "raised": [f.to_json() for f in self.findings],
                  "actions": [{"step": a.step, "kind": a.kind, "description": a.description} for a in self.actions]}
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_json(path, report)

    def record(self, step: int, kind: str, description: str) -> None:
        """Note an action taken on a finding; later checks look only at what comes after it."""
        self.actions.append(Action(step, kind, description))
        log.warning("autopilot at step %d: %s", step, description)
        self._since = len(self.steps)
        self._raised.discard(kind)

    def _check(self, detectors: tuple[Detector, ...]) -> list[Finding]:
        if len(self.steps) - self._since < max(8, 2 * self.check_every if self.actions else 0):
            return []  # after an action, give the change two check intervals before judging again
        history = self.history(self._since)
        shape = measure(history, self.thresholds)
        new = []
        for detector in detectors:
            for finding in detector(history, shape, self.thresholds):
                if finding.kind not in self._raised:
                    self._raised.add(finding.kind)
                    new.append(finding)
        for finding in new:
            self.findings.append(finding)
            if self.on_finding is not None:
                self.on_finding(finding)
        return new


def steer(new: list[Finding], monitor: Monitor, good: Snapshot, step: int, model: torch.nn.Module,
          optimizer: torch.optim.Optimizer, schedule: Any) -> None:
    """The autopilot, for any training loop (``fit``'s, a Trainer's callback): act on new findings — on NaN or
    divergence roll back to the last clean state and lower the LR, on oscillation lower it less — and after a
    clean check remember the state as good. ``schedule`` is a gradpilot ``Schedule``, a torch scheduler or None."""
    checked = len(monitor.steps) % monitor.check_every == 0
    for finding in new:
        if finding.kind in ("nan", "divergence"):
            back = good.step
            restored = good.restore(model, optimizer)
            before, after = schedules.multiply_lr(optimizer, schedule, monitor.lr_factor_divergence)
            where = f"rolled back to step {back}" if restored else "no good state to roll back to"
            monitor.record(step, finding.kind, f"{finding.kind}: {where}, lr {before:.3g} → {after:.3g}")
            return
        if finding.kind == "oscillation" and finding.sure:  # a hint (a validation swing) is measured, not guessed
            before, after = schedules.multiply_lr(optimizer, schedule, monitor.lr_factor_oscillation)
            monitor.record(step, finding.kind, f"oscillation: lr {before:.3g} → {after:.3g}")
    if checked and not new:
        good.take(step, model, optimizer)


def log_finding(finding: Finding) -> None:
    """Log a finding as it appears (an ``on_finding`` for the Trainer callbacks)."""
    log.warning("gradpilot: %s at %s %g: %s — %s", finding.kind, finding.unit, finding.end, finding.evidence,
                finding.advice)
