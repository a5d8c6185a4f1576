"""Say what is wrong with a run and what to change, from its curves.

Each detector is a plain function ``detector(history, shape, thresholds) -> list[Finding]`` over the run's
``RunShape``, measured once; ``diagnose`` runs them all and answers the question users ask first: was the
learning rate too high, too low, or about right? It says so only from the signs that have proved right on runs
they were not calibrated on (``Finding.lr``); other signs leave the verdict "unknown" and say why.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from gradpilot.diagnosis._dialects import speak
from gradpilot.diagnosis._held_out import (
    detect_metric_disagrees,
    detect_overfitting,
    detect_underfitting,
    validation_blew_up,
)
from gradpilot.diagnosis._run_shape import (
    MIN_POINTS,
    THRESHOLDS,
    Curve,
    RunShape,
    Thresholds,
    shape_of,
    swinging,
    usable,
)
from gradpilot.diagnosis.findings import KINDS, Diagnosis, Direction, Finding, fmt_lr, lr_remedy
from gradpilot.diagnosis.history import History
from gradpilot.errors import GradpilotError

__all__ = ["DETECTORS", "KINDS", "THRESHOLDS", "Detector", "Diagnosis", "Finding", "RunShape", "Thresholds",
           "detect_metric_disagrees", "detect_overfitting", "detect_underfitting", "diagnose", "measure", "shape_of"]

Detector = Callable[[History, RunShape, Thresholds], list[Finding]]
RECOVERED = 0.3  # a loss that came down this share of its start after an early jump has recovered from it
SURE_JUMP = 10.0  # ... though a jump to 10× the first loss says the LR is too high all the same

# --- detectors on the training curve ---------------------------------------------------------------------------
def detect_nan(history: History, shape: RunShape, th: Thresholds) -> list[Finding]:
    """A loss that became NaN or infinite and stayed so to the end of the log."""
    y, x = history.train_loss.values, history.train_loss.steps
    if not len(y) or np.isfinite(y[-1]):
        return []
    i = len(y) - 1
    while i > 0 and not np.isfinite(y[i - 1]):
        i -= 1
    if i == 0 or not np.isfinite(y[:i]).any():  # no LR acted before the first step: not the LR's doing
        return [Finding("nan", float(x[0]), float(x[-1]), f"the training loss is {y[0]} from its first logged step "
                        f"({x[0]:g}), before any learning rate could act", 1.0, {},
                        "check the data (NaN or infinite inputs and labels), the loss (a log of 0, a division by "
                        "0) and the model's initialisation; the learning rate is not the cause")]
    before = f"; the last finite loss was {y[i - 1]:.4g} at step {x[i - 1]:g}"
    remedy, advice = lr_remedy(shape, th.cut_broken)
    return [Finding("nan", float(x[i]), float(x[-1]), f"the training loss is {y[i]} from step {x[i]:g}{before}",
                    1.0, remedy, advice + "; clip gradients (max_grad_norm=1.0)", lr="lower")]


def diverges(c: Curve, th: Thresholds) -> bool:
    """A loss that climbs back above where it started, or gives back most of what it had gained."""
    drop, rise = c.start - c.low, c.end - c.low
    above_start = c.end > c.start + th.rise * c.noise and c.end > c.start * 1.02
    gave_back = drop > 3 * c.noise and rise > 0.5 * drop
    return bool(above_start or gave_back)


def detect_divergence(history: History, shape: RunShape, th: Thresholds) -> list[Finding]:
    """A descending loss that climbs back above where it started, or gives back most of what it had gained."""
    c = shape.falls()
    if c is None and len(usable(history.train_loss.values)) < MIN_POINTS:
        return _validation_divergence(history, shape, th)
    if c is None or not diverges(c, th):
        return []
    drop, rise = c.start - c.low, c.end - c.low
    where = f"by step {c.steps[-1]:g} (medians of the first and last logged losses, and the trend's low)"
    evidence = (f"loss went from about {c.start:.4g} to a low of about {c.low:.4g} at step {c.low_step:g}, then "
                f"rose to about {c.end:.4g} {where}" if c.low < c.start else
                f"loss rose from about {c.start:.4g} to about {c.end:.4g} {where} and never came below its start")
    confidence = min(1.0, 0.6 + 0.4 * min(1.0, rise / max(abs(drop), c.noise, 1e-12) / 2))
    remedy, advice = lr_remedy(shape, th.cut_diverged)
    return [Finding("divergence", c.low_step, float(c.steps[-1]), evidence, confidence, remedy,
                    advice + f"; or restart from the checkpoint near step {c.low_step:g}", lr="lower")]


def _validation_divergence(history: History, shape: RunShape, th: Thresholds) -> list[Finding]:
    """A log with too few training losses whose validation loss swings wildly and never descends: a hint (not
    a sure LR sign: a broken loss or data pipeline does the same)."""
    found = validation_blew_up(history)
    if found is None:
        return []
    evidence, start, end = found
    remedy, advice = lr_remedy(shape, th.cut_diverged)
    return [Finding("divergence", start, end, evidence, 0.6, remedy,
                    f"{advice}, and check the loss and the labels; log the training loss to tell which",
                    lr="lower", sure=False)]


def detect_oscillation(history: History, shape: RunShape, th: Thresholds) -> list[Finding]:
    """A loss that swings far more than minibatch noise explains — an early jump above the first logged loss, or
    many big spikes: the LR is too high — or a validation score that goes up and down from one evaluation to
    the next, which a too-high LR and a small or noisy validation set both give, so it sets no LR direction.

    (Noise that is large next to the progress made is no sign: a too-small LR makes little progress too.)"""
    c = shape.falls()
    if c is None or shape.diverged:
        return []
    signs = _training_swings(c, th)
    validation = _validation_swings(history, c, th)
    if not signs and not validation:
        return []
    if signs:
        remedy, advice = lr_remedy(shape, th.cut_oscillating)
        # a jump of under 10× that the run came back from is a hint: on the runs measured it was as often fine
        sure = c.spikes >= max(8, len(c.raw) // 50) or c.early_jump >= SURE_JUMP or c.moved < RECOVERED
        if not sure:
            remedy, advice = {}, "a lower LR or warmup would avoid the early jump, though the run recovered from it"
        return [Finding("oscillation", float(c.steps[0]), float(c.steps[-1]), "; ".join([*signs, validation][:2]
                        if validation else signs), min(1.0, 0.5 + 0.2 * (len(signs) + bool(validation))), remedy,
                        advice + " (or a larger batch)" if sure else advice, lr="lower", sure=sure)]
    return [Finding("oscillation", float(c.steps[0]), float(c.steps[-1]), validation, 0.5, {},
                    "a lower LR or a larger batch may steady it, but the training loss shows no sign of a too-high "
                    "LR and a small or noisy validation set swings too", lr="lower", sure=False)]


def _training_swings(c: Curve, th: Thresholds) -> list[str]:
    """An early jump to five times the first logged loss, or many spikes; none for a loss that never moved (a
    plateau), and no spikes on one still falling steadily (its noise is large next to the little progress)."""
    if c.moved < 0.03:
        return []
    signs = []
    if c.early_jump > 5:
        signs.append(f"the loss jumped to {c.early_jump:.0f}× its first logged value ({c.raw[0]:.4g}) in the "
                     "first tenth of the run")
    if c.spikes >= max(8, len(c.raw) // 50) and c.late_share < th.too_low_share:
        signs.append(f"{c.spikes} spikes to over three times the trend")
    return signs


def _validation_swings(history: History, c: Curve, th: Thresholds) -> str:
    """Words saying the validation metric or loss swung up and down between evaluations, or ""."""
    found = swinging(history, c, th)
    if found is None:
        return ""
    name, v, size = found
    return (f"validation {name} swung up and down over {len(v)} evaluations, between {v.min():.4g} and "
            f"{v.max():.4g} (one evaluation scatters {size:.1f}× as far as its trend moved in the whole run)")


def detect_plateau(history: History, shape: RunShape, th: Thresholds) -> list[Finding]:
    """A loss that ends about where it started: one that never moved, one that fell and came back (the LR undid
    what it learnt), or one held at chance — the loss of predicting the class prior."""
    c = shape.falls()
    if c is None or shape.diverged or c.moved > 0.25:
        return []
    chance = at_chance(history, c, th)
    if c.moved > th.plateau and not chance:
        return []
    fell, jump = _fall_undone(c), float(np.max(c.raw[: max(3, len(c.raw) // 10)])) > 2 * abs(float(c.raw[0]))
    why, factor, lr = _plateau_cause(c, th, fell, jump, bool(chance))
    where = f"; {chance}" if chance else ""
    evidence = (f"the loss ended about {c.end:.4g} against about {c.start:.4g} at the start, over {len(c.raw)} "
                f"logged steps{where}; {why}")
    if lr is None or (chance and not jump and fell <= th.plateau):
        # a loss at chance, or one that never moved: too small an LR and one that broke the model look alike
        return [_plateau_hint(c, evidence, lr or "raise")]
    remedy, advice = lr_remedy(shape, factor)
    return [Finding("plateau", float(c.steps[0]), float(c.steps[-1]), evidence, 0.7, remedy, advice, lr=lr)]


def _fall_undone(c: Curve) -> float:
    """The share of its start a loss fell by before coming back (0 when it did not fall, or did not come back)."""
    came_back = c.end - c.low > max(3 * c.noise, 0.25 * (c.start - c.low))
    return (c.start - c.low) / max(abs(c.start), 1e-12) if c.start - c.low > 3 * c.noise and came_back else 0.0


def _plateau_hint(c: Curve, evidence: str, way: Direction) -> Finding:
    """A plateau that leans ``way`` but sets no verdict: its remedy leaves the LR alone."""
    advice = ("if the run is new, raise the LR about 10×; if it was resumed or fine-tunes a model already near its "
              "best, there is nothing to fix" if way == "raise" else
              "a lower LR may be what it needs, or a higher one: measure it from a checkpoint")
    return Finding("plateau", float(c.steps[0]), float(c.steps[-1]), evidence, 0.5, {}, advice, lr=way, sure=False)


def _plateau_cause(c: Curve, th: Thresholds, fell: float, jump: bool,
                   chance: bool) -> tuple[str, float, Direction | None]:
    """Why a loss ended where it began, the factor for the LR and its direction: a broken run (a jump, a fall
    undone, a drop to chance) wants it cut (``Thresholds.cut_broken``); a loss held at chance that never moved
    wants it raised; a loss that merely never moved sets no direction (a resumed run or a model at its floor
    looks the same)."""
    if jump:
        return "an early jump suggests the LR broke the model", th.cut_broken, "lower"
    if fell > th.plateau:
        return (f"it fell {fell:.1%} to about {c.low:.4g} by step {c.low_step:g} and came back: the LR undid what "
                "it learnt", th.cut_broken, "lower")
    if chance and c.start > c.end + 2 * c.noise and c.late_share < th.too_low_share:
        return ("it dropped a little and sits at chance: the LR broke the model, which now predicts the prior",
                th.cut_broken, "lower")
    if chance:
        return "too small an LR leaves it at chance", 10.0, "raise"
    return ("it did not move: too small an LR, or a run already at its floor (the log alone cannot tell)", 10.0,
            None)


def at_chance(history: History, c: Curve, th: Thresholds) -> str:
    """Words saying the run sits at chance, or "": its loss ends within a small share of ln(k) for a few classes
    k (what cross-entropy gives for guessing among k), and its logged accuracy is near 1/k."""
    k = round(math.exp(c.end)) if 0.5 < c.end < 3.1 else 0
    if k < 2 or abs(c.end - math.log(k)) > th.chance * math.log(k):
        return ""
    m = history.val_metric
    if m is None or not history.metric_name or "acc" not in history.metric_name.lower() or not len(m):
        return ""  # ln k lies close to many losses: without the accuracy to confirm it, it says nothing
    final = float(m.values[-1])
    words = f"{c.end:.4g} is the loss of guessing among {k} classes (ln {k} = {math.log(k):.4g})"
    return words + f", and accuracy is {final:.3g}" if 0.5 / k <= final <= 1.5 / k else ""


def detect_slow_convergence(history: History, shape: RunShape, th: Thresholds) -> list[Finding]:
    """A constant LR whose loss came well down, stopped falling and bounces at a noise floor: decay lowers the floor."""
    c = shape.falls()
    if c is None or not shape.constant_lr or c.moved < 0.3 or shape.diverged or detect_oscillation(history, shape, th):
        return []
    n = len(c.smooth)
    rel_noise = c.noise / c.scale
    if c.late_share >= 0.15 or rel_noise < 0.12:
        return []
    start = float(c.steps[n // 2])
    peak = shape.peak_lr
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
    "metric_disagrees": detect_metric_disagrees,
    "underfitting": detect_underfitting,
    "slow_convergence": detect_slow_convergence,
}


def diagnose(history: History, thresholds: Thresholds = THRESHOLDS) -> Diagnosis:
    """Run every detector on ``history``; a run with nothing wrong gets one ``healthy`` finding, one too short
    to judge an ``insufficient_data`` finding. ``thresholds`` are the calibrated constants (the defaults are
    what benchmarks/diagnose.py fits)."""
    if not isinstance(history, History):
        raise GradpilotError(f"diagnose takes a run's History, got {type(history).__name__}: for a log file call "
                             "gradpilot.diagnose(gradpilot.read_log(path))")
    with np.errstate(all="ignore"):  # losses near the float limits overflow in sums; the detectors cope
        found = speak(_diagnose(history, thresholds), history.tool)
    return dataclasses.replace(found, assumed=assumed(history))


def assumed(history: History) -> tuple[str, ...]:
    """What the reading took for granted that the log does not say outright: which way its metric is better."""
    name, basis = history.metric_name, history.metric_direction
    if history.val_metric is None or not name:
        return ()
    way = "higher" if history.higher_is_better else "lower"
    say = "say --higher-is-better or --lower-is-better if not"
    return ({"name": f"{name}: {way} is better, by its name",
             "given": f"{name}: {way} is better, as given",
             "loss": f"{name}: {way} is better, as it moves {'against' if history.higher_is_better else 'with'} the "
                     f"validation loss; {say}",
             }.get(basis, f"{name}: which way is better is not known (its name does not say, nor does the loss), so "
                          f"the advice leaves it aside; say --higher-is-better or --lower-is-better"),)


def measure(history: History, thresholds: Thresholds = THRESHOLDS) -> RunShape:
    """The run's shape, with the divergence rule applied once for every detector."""
    shape = shape_of(history)
    c = shape.falls()
    return dataclasses.replace(shape, diverged=c is not None and diverges(c, thresholds))


def _diagnose(history: History, th: Thresholds) -> Diagnosis:
    shape = measure(history, th)
    findings: list[Finding] = []
    for detector in DETECTORS.values():
        findings.extend(detector(history, shape, th))
    if any(f.kind == "nan" for f in findings):  # a NaN run's other symptoms are the NaN's
        findings = [f for f in findings if f.kind in ("nan", "divergence")]
    points = len(usable(history.train_loss.values))
    evaluations = 0 if history.val_loss is None else int(np.isfinite(history.val_loss.values).sum())
    if not findings and points < MIN_POINTS and evaluations < 3:
        return _insufficient(history, points)
    findings = _one_direction(findings)
    verdict, reason = _lr_verdict(shape, findings)
    if not findings:
        findings.append(_healthy(history, shape))
    return Diagnosis(tuple(findings), verdict, reason)


def _one_direction(findings: list[Finding]) -> list[Finding]:
    """Never opposite LR remedies in one report, hints included: where a sure sign says lower it, a finding that
    would raise it keeps only its other advice (train longer); where the signs point both ways and none is sure,
    none moves the LR — they say so, and ``gradpilot probe`` measures it."""
    ways = {f.lr for f in findings if f.lr is not None}
    if ways != {"lower", "raise"}:
        return findings
    sure = {f.lr for f in findings if f.lr is not None and f.sure}
    keep = "lower" if "lower" in sure else "raise" if "raise" in sure else None  # the sure way wins
    return [f if f.lr is None or f.lr == keep else _without_lr(f, _advice_without_lr(f, keep)) for f in findings]


def _advice_without_lr(finding: Finding, kept: str | None) -> str:
    """What a finding whose LR remedy is dropped still says: its other advice where a sure sign lowers the LR,
    else that the log points both ways."""
    return finding.advice.split(", or ")[-1] if kept == "lower" else _BOTH_WAYS


_BOTH_WAYS = ("the signs in this log point the learning rate both ways, so it says neither: measure it from a "
              "checkpoint (gradpilot probe)")


def _without_lr(finding: Finding, advice: str) -> Finding:
    rest = {k: v for k, v in finding.remedy.items() if k != "learning_rate"}
    return dataclasses.replace(finding, remedy=rest, lr=None, advice=advice)


def _insufficient(history: History, points: int) -> Diagnosis:
    evidence = (f"only {points} finite training-loss point{'s' if points != 1 else ''} in the log; "
                f"at least {MIN_POINTS} (or 3 evaluations) are needed to judge a curve")
    return Diagnosis((Finding("insufficient_data", *_span(history), evidence, 1.0, {},
                              "log the loss more often (logging_steps, log_every_n_steps) or train longer"),),
                     "unknown", f"too little to judge: {evidence}")


def _healthy(history: History, shape: RunShape) -> Finding:
    c, v = shape.curve, history.val_loss
    if c is not None:
        evidence = f"the loss fell from about {c.start:.4g} to about {c.end:.4g} and settled"
    elif v is not None and len(v):
        evidence = (f"judged from the {len(v)} evaluations (few training losses logged): validation loss went "
                    f"from {v.values[0]:.4g} to {v.values[-1]:.4g}")
    else:
        evidence = ""
    return Finding("healthy", *_span(history), evidence, 0.6, {}, "keep going")


def _span(history: History) -> tuple[float, float]:
    """The first and last step the log has: of its training losses, or its evaluations where it has none."""
    s = history.train_loss if len(history.train_loss) or history.val_loss is None else history.val_loss
    return (float(s.steps[0]), float(s.steps[-1])) if len(s) else (0.0, 0.0)


def _lr_verdict(shape: RunShape, findings: list[Finding]) -> tuple[str, str]:
    """The verdict folded over the findings' LR directions; signs that set none leave it "unknown"."""
    named = f" ({fmt_lr(shape.peak_lr)})" if shape.peak_lr is not None else ""
    for way, verdict in (("lower", "too high"), ("raise", "too low")):
        sure = [f for f in findings if f.lr == way and f.sure]
        if sure:
            return verdict, f"the learning rate{named} is {verdict}: {sure[0].kind} — {sure[0].evidence}"
    hints = [f for f in findings if f.lr is not None]
    if hints:
        way = "high" if hints[0].lr == "lower" else "low"
        return "unknown", (f"the log hints that the learning rate{named} may be too {way} ({hints[0].kind} — "
                           f"{hints[0].evidence}), but from one log that sign is wrong too often to say so")
    return _no_sign(shape, named)


def _no_sign(shape: RunShape, named: str) -> tuple[str, str]:
    """The verdict where no finding points the LR either way."""
    if not shape.descends:
        return "unknown", ("the objective goes below zero (an adversarial critic's or a policy's loss?), so its "
                           "curve says nothing about the learning rate")
    if shape.peak_lr is None:
        return "unknown", ("the log has no learning-rate column, so the verdict rests on the loss alone: "
                           "no LR problem seen")
    return "about right", f"the learning rate{named} shows none of the signs of too high or too low"
