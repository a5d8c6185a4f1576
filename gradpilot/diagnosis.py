"""Say what is wrong with a run and what to change, from its curves.

Each detector is a plain function ``detector(history) -> list[Finding]``; ``diagnose`` runs them all and
answers the question users ask first: was the learning rate too high, too low, or about right?
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from gradpilot._dialects import speak
from gradpilot._findings import KINDS, TOO_HIGH, Diagnosis, Finding, fmt_lr, lr_remedy
from gradpilot._run_shape import _ACTIVE as _THRESHOLDS
from gradpilot._run_shape import (
    MEMO,
    MIN_POINTS,
    THRESHOLDS,
    Curve,
    Thresholds,
    decayed,
    peak_lr,
    swinging,
    train_curve,
    usable,
)
from gradpilot._run_shape import thresholds as _th
from gradpilot.history import History

__all__ = ["DETECTORS", "KINDS", "THRESHOLDS", "Diagnosis", "Finding", "Thresholds", "diagnose"]

Detector = Callable[[History], list[Finding]]

# --- detectors -------------------------------------------------------------------------------------------------
def detect_nan(history: History) -> list[Finding]:
    """A loss that became NaN or infinite and stayed so to the end of the log."""
    y, x = history.train_loss.values, history.train_loss.steps
    if not len(y) or np.isfinite(y[-1]):
        return []
    i = len(y) - 1
    while i > 0 and not np.isfinite(y[i - 1]):
        i -= 1
    before = f"; the last finite loss was {y[i - 1]:.4g} at step {x[i - 1]:g}" if i > 0 else ""
    remedy, advice = lr_remedy(history, _th().cut_broken)
    return [Finding("nan", float(x[i]), float(x[-1]), f"the training loss is {y[i]} from step {x[i]:g}{before}",
                    1.0, remedy, advice + "; clip gradients (max_grad_norm=1.0)")]


def detect_divergence(history: History) -> list[Finding]:
    """A loss that climbs back above where it started, or gives back most of what it had gained."""
    c = train_curve(history)
    if c is None:
        return []
    drop, rise = c.start - c.low, c.end - c.low
    above_start = c.end > c.start + _th().rise * c.noise and c.end > c.start * 1.02
    gave_back = drop > 3 * c.noise and rise > 0.5 * drop
    if not (above_start or gave_back):
        return []
    evidence = (f"loss went from {c.start:.4g} to a low of {c.low:.4g} at step {c.low_step:g}, then rose to "
                f"{c.end:.4g} by step {c.steps[-1]:g}" if c.low < c.start else
                f"loss rose from {c.start:.4g} to {c.end:.4g} by step {c.steps[-1]:g} and never came below its start")
    confidence = min(1.0, 0.6 + 0.4 * min(1.0, rise / max(abs(drop), c.noise, 1e-12) / 2))
    remedy, advice = lr_remedy(history, _th().cut_diverged)
    return [Finding("divergence", c.low_step, float(c.steps[-1]), evidence, confidence, remedy,
                    advice + f"; or restart from the checkpoint near step {c.low_step:g}")]


def detect_oscillation(history: History) -> list[Finding]:
    """A loss that swings far more than minibatch noise explains: an early overshoot, many big spikes, or a
    validation score that goes up and down from one evaluation to the next.

    (Noise that is large next to the progress made is no sign: a too-small LR makes little progress too.)"""
    c = train_curve(history)
    if c is None or detect_divergence(history):
        return []
    signs = _training_swings(c)
    validation = _validation_swings(history)
    if validation:
        signs.append(validation)
    if not signs:
        return []
    remedy, advice = lr_remedy(history, _th().cut_oscillating)
    return [Finding("oscillation", float(c.steps[0]), float(c.steps[-1]), "; ".join(signs),
                    min(1.0, 0.5 + 0.2 * len(signs)), remedy, advice + " (or a larger batch)")]


def _training_swings(c: Curve) -> list[str]:
    """An early jump to five times the starting loss, or many spikes; none for a loss that never moved (a plateau),
    and no spikes on one still falling steadily (its noise is large next to the little progress it made)."""
    if c.moved < 0.03:
        return []
    signs = []
    if c.early_jump > 5:
        signs.append(f"the loss jumped to {c.early_jump:.0f}× its starting value in the first tenth of the run")
    if c.spikes >= max(8, len(c.raw) // 50) and c.late_share < _th().too_low_share:
        signs.append(f"{c.spikes} spikes to over three times the trend")
    return signs


def _validation_swings(history: History) -> str:
    """Words saying the validation metric or loss swung up and down between evaluations, or ""."""
    found = swinging(history)
    if found is None:
        return ""
    name, v, size = found
    return (f"validation {name} swung up and down over {len(v)} evaluations, between {v.min():.4g} and "
            f"{v.max():.4g} ({size:.1f}× that range beyond one rise and fall)")


def detect_plateau(history: History) -> list[Finding]:
    """A loss that ends about where it started: one that never moved (too small an LR), one that fell and came
    back (the LR undid what it learnt), or one held at chance — the loss of predicting the class prior."""
    c = train_curve(history)
    if c is None or detect_divergence(history) or c.moved > 0.25:
        return []
    chance = at_chance(history, c)
    if c.moved > _th().plateau and not chance:
        return []
    came_back = c.end - c.low > max(3 * c.noise, 0.25 * (c.start - c.low))
    fell = (c.start - c.low) / max(abs(c.start), 1e-12) if c.start - c.low > 3 * c.noise and came_back else 0.0
    jump = float(np.max(c.raw[: max(3, len(c.raw) // 10)])) > 2 * abs(c.start)
    why, factor = _plateau_cause(c, fell, jump, bool(chance))
    where = f"; {chance}" if chance else ""
    evidence = (f"the loss ended {c.end:.4g} against {c.start:.4g} at the start, over {len(c.raw)} logged "
                f"steps{where}; {why}")
    remedy, advice = lr_remedy(history, factor)
    return [Finding("plateau", float(c.steps[0]), float(c.steps[-1]), evidence, 0.7, remedy, advice)]


def _plateau_cause(c: Curve, fell: float, jump: bool, chance: bool) -> tuple[str, float]:
    """Why a loss ended where it began, and the factor for the LR: a broken run (a jump, a fall undone, a drop to
    chance) wants it cut (``Thresholds.cut_broken``), a loss that never moved ten times it. (One that ended
    clearly above its start is a divergence, found before this.)"""
    cut = _th().cut_broken
    if jump:
        return "an early jump suggests the LR broke the model", cut
    if fell > _th().plateau:
        return (f"it fell {fell:.1%} to {c.low:.4g} by step {c.low_step:g} and came back: the LR undid what it "
                "learnt", cut)
    if chance and c.start > c.end + 2 * c.noise and c.late_share < _th().too_low_share:
        return "it dropped a little and sits at chance: the LR broke the model, which now predicts the prior", cut
    return "too small an LR barely moves it", 10.0


def at_chance(history: History, c: Curve) -> str:
    """Words saying the run sits at chance, or "": its loss ends within a small share of ln(k) for a few classes
    k (what cross-entropy gives for guessing among k), and its logged accuracy is near 1/k."""
    k = round(math.exp(c.end)) if 0.5 < c.end < 3.1 else 0
    if k < 2 or abs(c.end - math.log(k)) > _th().chance * math.log(k):
        return ""
    m = history.val_metric
    if m is None or not history.metric_name or "acc" not in history.metric_name.lower() or not len(m):
        return ""  # ln k lies close to many losses: without the accuracy to confirm it, it says nothing
    final = float(m.values[-1])
    words = f"{c.end:.4g} is the loss of guessing among {k} classes (ln {k} = {math.log(k):.4g})"
    return words + f", and accuracy is {final:.3g}" if 0.5 / k <= final <= 1.5 / k else ""


def detect_overfitting(history: History) -> list[Finding]:
    """Validation loss rising while the training loss keeps falling."""
    v = history.val_loss
    if v is None or len(v) < 3:
        return []
    y = v.values
    best = int(np.nanargmin(y)) if np.isfinite(y).any() else -1
    if best < 0 or best == len(y) - 1:
        return []
    rise = (y[-1] - y[best]) / max(abs(y[best]), 1e-12)
    c = train_curve(history)
    if c is None or rise < 0.1 or best >= 0.8 * len(y) or detect_divergence(history):  # a broken run, not memorising
        return []
    at_best = float(np.interp(v.steps[best], c.steps, c.smooth))
    train_end = float(c.smooth[-1])
    if train_end > at_best * 1.5 or train_end - at_best > 0.1 * c.scale:  # training loss rose too: not overfitting
        return []
    where, remedy, stop = _stop_at(history, best)
    evidence = (f"validation loss was lowest ({y[best]:.4g}) at {where} and rose "
                f"{rise:.0%} to {y[-1]:.4g}, while the training loss went from {at_best:.4g} to {train_end:.4g}")
    return [Finding("overfitting", float(v.steps[best]), float(v.steps[-1]), evidence, min(1.0, 0.5 + rise),
                    remedy, f"{stop}, where validation loss was lowest (or use early stopping, more data, or "
                    "regularisation)", unit="step")]


def _stop_at(history: History, i: int) -> tuple[str, dict[str, Any], str]:
    """Where the ``i``-th validation happened, and the remedy that stops training there: by epoch when the
    log counts epochs, else by step (an evaluation is not an epoch)."""
    assert history.val_loss is not None
    step = history.val_loss.steps[i]
    epochs = history.val_epochs
    if epochs is not None and len(epochs) == len(history.val_loss) and epochs[i] >= 1:
        epoch = int(epochs[i])
        return f"epoch {epoch} (step {step:g})", {"num_train_epochs": epoch}, f"stop at epoch {epoch}"
    return (f"evaluation {i + 1} (step {step:g})", {"max_steps": int(step)},
            f"stop at step {step:g} (the log does not say which epoch that is)")


def detect_underfitting(history: History) -> list[Finding]:
    """Validation still improving when the run ended: it stopped too soon."""
    v = history.val_loss
    if v is None or len(v) < 3 or not np.isfinite(v.values).all():
        return []
    y = v.values
    total = y[0] - y.min()
    last = y[-2] - y[-1]
    if total <= 0 or int(np.argmin(y)) != len(y) - 1 or last < 0.1 * total:
        return []
    longer = _train_longer(history)
    evidence = (f"validation loss was still falling at the end: {y[-2]:.4g} → {y[-1]:.4g} in the last evaluation, "
                f"{last / total:.0%} of its whole improvement")
    slow = _slow_training(history)
    if slow is not None:
        remedy, advice = lr_remedy(history, 3.0)
        return [Finding("underfitting", float(v.steps[-2]), float(v.steps[-1]), evidence + slow, 0.7, remedy,
                        advice + f", or train longer ({longer[1]})")]
    return [Finding("underfitting", float(v.steps[-2]), float(v.steps[-1]), evidence, 0.6, longer[0],
                    f"train longer: {longer[1]}")]


def _slow_training(history: History) -> str | None:
    """Why an underfit run's LR looks too low (its training loss, not decayed, fell late or little), or None."""
    c = train_curve(history)
    if c is None or c.end > c.start or decayed(history):
        return None
    if c.late_share >= _th().too_low_share:
        return f"; {c.late_share:.0%} of the training loss's decrease came in the second half"
    return f"; the training loss fell only {c.moved:.0%} in the whole run" if c.moved < 0.3 else None


def _train_longer(history: History) -> tuple[dict[str, Any], str]:
    """Twice the run, in epochs when the log counts them, else in steps."""
    epochs = history.val_epochs
    if epochs is not None and len(epochs) and epochs[-1] >= 1:
        n = int(epochs[-1])
        return {"num_train_epochs": 2 * n}, f"{n} → {2 * n} epochs"
    steps = int(history.train_loss.steps[-1])
    return {"max_steps": 2 * steps}, f"{steps} → {2 * steps} steps"


def detect_slow_convergence(history: History) -> list[Finding]:
    """A constant LR whose loss came well down, stopped falling and bounces at a noise floor: decay lowers the floor."""
    peak, constant = peak_lr(history)
    c = train_curve(history)
    if c is None or not constant or c.moved < 0.3 or detect_divergence(history) or detect_oscillation(history):
        return []
    n = len(c.smooth)
    rel_noise = c.noise / c.scale
    if c.late_share >= 0.15 or rel_noise < 0.12:
        return []
    start = float(c.steps[n // 2])
    floor = peak / 100 if peak is not None else None
    evidence = (f"the LR stayed at {fmt_lr(peak) if peak else '?'}; over the second half the loss trend moved "
                f"{c.late_share:.0%} of its decrease while steps scatter {rel_noise:.0%} of it around the trend")
    target = fmt_lr(floor) if floor else "lr/100"
    advice = f"add cosine decay to {target} over the last {int(c.steps[-1] - start)} steps"
    return [Finding("slow_convergence", start, float(c.steps[-1]), evidence, 0.5, {"lr_scheduler_type": "cosine"},
                    advice)]


DETECTORS: dict[str, Detector] = {
    "nan": detect_nan,
    "divergence": detect_divergence,
    "oscillation": detect_oscillation,
    "plateau": detect_plateau,
    "overfitting": detect_overfitting,
    "underfitting": detect_underfitting,
    "slow_convergence": detect_slow_convergence,
}


def diagnose(history: History, thresholds: Thresholds = THRESHOLDS) -> Diagnosis:
    """Run every detector on ``history``; a run with nothing wrong gets one ``healthy`` finding, one too short
    to judge an ``insufficient_data`` finding. ``thresholds`` are the calibrated constants (the defaults are
    what benchmarks/diagnose.py fits)."""
    token, chosen = MEMO.set({}), _THRESHOLDS.set(thresholds)
    try:
        with np.errstate(all="ignore"):  # losses near the float limits overflow in sums; the detectors cope
            return speak(_diagnose(history), history.tool)
    finally:
        MEMO.reset(token)
        _THRESHOLDS.reset(chosen)


def _diagnose(history: History) -> Diagnosis:
    findings: list[Finding] = []
    for detector in DETECTORS.values():
        findings.extend(detector(history))
    kinds = {f.kind for f in findings}
    if "nan" in kinds:  # a NaN run's other symptoms are the NaN's
        findings = [f for f in findings if f.kind in ("nan", "divergence")]
    points = len(usable(history.train_loss.values))
    if not findings and points < MIN_POINTS:
        return _insufficient(history, points)
    verdict, reason = _lr_verdict(history, findings)
    if verdict == "too low" and not any("learning_rate" in f.remedy for f in findings):
        findings.append(_still_falling(history))
    if not findings:
        findings.append(_healthy(history))
    return Diagnosis(tuple(findings), verdict, reason)


def _insufficient(history: History, points: int) -> Diagnosis:
    evidence = (f"only {points} finite training-loss point{'s' if points != 1 else ''} in the log; "
                f"at least {MIN_POINTS} are needed to judge a curve")
    return Diagnosis((Finding("insufficient_data", float(history.train_loss.steps[0]),
                              float(history.train_loss.steps[-1]), evidence, 1.0, {},
                              "log the loss more often (logging_steps, log_every_n_steps) or train longer"),),
                     "unknown", f"too little to judge: {evidence}")


def _healthy(history: History) -> Finding:
    c = train_curve(history)
    end = float(history.train_loss.steps[-1])
    evidence = "" if c is None else f"the loss fell from {c.start:.4g} to {c.end:.4g} and settled"
    return Finding("healthy", float(history.train_loss.steps[0]), end, evidence, 0.6, {}, "keep going")


def _still_falling(history: History) -> Finding:
    """The finding behind a "too low" verdict that no detector put into words: the loss still falling as fast."""
    c = train_curve(history)
    assert c is not None
    remedy, advice = lr_remedy(history, 3.0)
    evidence = (f"{c.late_share:.0%} of the loss's decrease came in the second half ({c.start:.4g} → {c.end:.4g}): "
                "it is still falling about as fast as it was")
    return Finding("underfitting", float(c.steps[len(c.steps) // 2]), float(c.steps[-1]), evidence, 0.5, remedy,
                   advice + ", or train longer")


def _late_share(history: History) -> float | None:
    """The share of an undecayed run's loss decrease that came in its second half, where that marks the LR too
    low; else None."""
    c = train_curve(history)
    if c is None or c.late_share < _th().too_low_share or decayed(history):
        return None
    return c.late_share


def _lr_signs(findings: list[Finding], peak: float | None) -> tuple[list[Finding], list[Finding]]:
    """The findings that say the LR is too high (a plateau whose remedy lowers it counts), and too low."""
    high = [f for f in findings if f.kind in TOO_HIGH
            or (f.kind == "plateau" and f.remedy.get("learning_rate", 1e9) < (peak or 0))]
    low = [f for f in findings if f.kind == "plateau" or (f.kind == "underfitting" and "learning_rate" in f.remedy)]
    return high, low


def _lr_verdict(history: History, findings: list[Finding]) -> tuple[str, str]:
    peak, _ = peak_lr(history)
    named = f" ({fmt_lr(peak)})" if peak is not None else ""
    high, low = _lr_signs(findings, peak)
    if high:
        return "too high", f"the learning rate{named} is too high: {high[0].kind} — {high[0].evidence}"
    if low:
        return "too low", f"the learning rate{named} is too low: {low[0].evidence}"
    late = None if findings else _late_share(history)
    if late is not None:
        return "too low", (f"the learning rate{named} is too low: {late:.0%} of the loss's decrease came in "
                           "the second half — it is still falling about as fast as it was")
    if peak is None:
        return "unknown", ("the log has no learning-rate column, so the verdict rests on the loss alone: "
                           "no LR problem seen")
    return "about right", f"the learning rate{named} shows none of the signs of too high or too low"
