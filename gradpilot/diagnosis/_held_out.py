"""The detectors that read a run's evaluations: overfitting, a validation loss and metric that disagree, and a
run stopped while validation still improved. Same signature as every detector: ``(history, shape, thresholds)``.

NumPy only: ``gradpilot diagnose`` never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gradpilot.diagnosis._run_shape import MIN_EVALUATIONS, RunShape, Thresholds, point_noise, swing
from gradpilot.diagnosis.findings import Finding, lr_remedy
from gradpilot.diagnosis.history import History, Series
from gradpilot.diagnosis.signal import median

OVERFIT_RISE = 0.1  # validation loss this share above its low, at the end
LATE_LOW = 0.75  # a low in the last quarter of the evaluations is too recent to call a rise
MEMORISING = 0.5  # training loss halved since the validation low: the model is memorising
CLEAR_RISE = 3.0  # else the rise must stand this many noise widths above the validation loss's scatter
STEADY_RISE = 0.8  # ... or go up steadily: this share of the later evaluations' pairs in rising order
TRAINING_FELL = 0.9  # the training loss must have fallen since the low (a rise in both is no overfitting)
METRIC_NOISE = 2.0  # a metric gain must exceed this many noise widths of the metric to outweigh the loss
STRONG_RISE = 0.5  # ... unless the validation loss rose this share above its low: overfitting whatever the metric
WORSENED_SWING = 0.3  # a worsening is a trend: a validation loss scattering this share of its movement swings
WILD_SWING = 1.5  # a validation loss alone: a typical step between evaluations of this factor or more is no descent


@dataclass(frozen=True)
class Rise:
    """Validation loss that rose from its low while the training loss fell."""

    low: int  # index of the logged evaluation at the low
    rise: float  # share above the low at the end (trend)
    train_at_low: float
    train_end: float


def smooth3(y: np.ndarray) -> np.ndarray:
    """A three-point mean (two at the ends): one noisy evaluation does not make a low or a rise. Fewer than five
    evaluations are kept as logged (there a mean would blur the low into its neighbours)."""
    if len(y) < MIN_EVALUATIONS:
        return y.astype(float)
    s = y.astype(float).copy()
    s[1:-1] = (y[:-2] + y[1:-1] + y[2:]) / 3
    s[0], s[-1] = (y[0] + y[1]) / 2, (y[-1] + y[-2]) / 2
    return s


def _train_at(history: History, shape: RunShape, steps: np.ndarray) -> np.ndarray | None:
    """The training loss's trend at ``steps`` (its logged values where too few for a curve)."""
    c = shape.falls()
    if c is not None:
        return np.asarray(np.interp(steps, c.steps, c.smooth), float)
    t = history.train_loss
    keep = np.isfinite(t.values)
    if keep.sum() < 2 or not shape.descends:
        return None
    return np.asarray(np.interp(steps, t.steps[keep], t.values[keep]), float)


def validation_rise(history: History, shape: RunShape) -> Rise | None:
    """The validation loss's rise from a clear low while the training loss kept falling, or None."""
    v = history.val_loss
    if v is None or shape.diverged:
        return None
    keep = np.isfinite(v.values)
    y, steps = v.values[keep], v.steps[keep]
    if len(y) < 3:
        return None
    s = smooth3(y)
    low = int(np.argmin(s))
    rise = (s[-1] - s[low]) / max(abs(float(s[low])), 1e-12)
    if low > LATE_LOW * (len(y) - 1) or rise < OVERFIT_RISE:
        return None
    trend = _train_at(history, shape, np.array([steps[low], steps[-1]]))
    if trend is None or trend[1] > TRAINING_FELL * trend[0]:
        return None
    near = max(0, low - 1) + int(np.argmin(y[max(0, low - 1): low + 2]))  # the logged low beside the trend's
    noisy = len(y) >= MIN_EVALUATIONS and (s[-1] - s[low]) < CLEAR_RISE * point_noise(y)
    if trend[1] > MEMORISING * trend[0] and noisy and rising_share(y[near:]) < STEADY_RISE:
        return None
    return Rise(int(np.flatnonzero(keep)[near]), float(rise), float(trend[0]), float(trend[1]))


def rising_share(y: np.ndarray) -> float:
    """The share of pairs of evaluations (earlier, later) in which the later is higher: 1 for a steady rise."""
    if len(y) < 2:
        return 0.0
    i, j = np.triu_indices(len(y), 1)
    return float(np.mean(y[j] > y[i]))


def metric_later(history: History, at_step: float) -> tuple[int, int] | None:
    """Where the logged metric was best after ``at_step`` (the validation loss's low), when it kept improving
    clearly past its value there: (index of the metric at the low, index of its later best); else None."""
    m = history.val_metric
    if m is None or len(m) < 3 or not history.direction_known:
        return None  # a metric whose direction is not known is never read as improving
    sign = 1.0 if history.higher_is_better else -1.0
    values = sign * m.values
    at = int(np.argmin(np.abs(m.steps - at_step)))
    later = np.flatnonzero((m.steps > m.steps[at]) & np.isfinite(values))
    if not len(later) or not np.isfinite(values[at]):
        return None
    best = int(later[np.argmax(values[later])])
    level = float(median(np.abs(m.values[np.isfinite(m.values)])))
    gain = float(values[best] - values[at])
    return (at, best) if gain > max(METRIC_NOISE * point_noise(m.values), 0.005 * level) else None


def detect_overfitting(history: History, shape: RunShape, th: Thresholds) -> list[Finding]:
    """Validation loss rising clearly from a low while the training loss keeps falling — and the logged metric
    did not keep improving meanwhile (then the loss and the metric disagree: ``detect_metric_disagrees``),
    unless the loss rose so far that it is overfitting whatever the metric says. A validation loss that ends far
    above its low (``STRONG_RISE``) is overfitting whatever the training loss did (``validation_worsened``)."""
    found = validation_rise(history, shape)
    if found is None or history.val_loss is None:
        return validation_worsened(history, shape)
    v = history.val_loss
    step = float(v.steps[found.low])
    if metric_later(history, step) is not None and found.rise < STRONG_RISE:
        return []  # the metric kept improving: detect_metric_disagrees says to choose the checkpoint by it
    where, remedy, stop = stop_at(history, shape, found.low)
    evidence = (f"validation loss was lowest ({v.values[found.low]:.4g}) at {where} and ended at "
                f"{v.values[-1]:.4g} (its trend {found.rise:.0%} above the low), while the training loss's trend "
                f"went from about {found.train_at_low:.4g} to {found.train_end:.4g}")
    warming = _warming(history, v.steps, found.low)
    return [Finding("overfitting", step, float(v.steps[-1]), evidence + (WARMING if warming else ""),
                    min(1.0, 0.5 + found.rise), remedy, f"{stop}, where validation loss was lowest" +
                    (WARMING_ADVICE if warming else OVERFIT_ADVICE), lr="lower" if warming else None,
                    sure=not warming)]


WARMING = "; it rose from the first evaluation on while the LR was still rising"
WARMING_ADVICE = "; the rise began as the LR warmed up, so a lower peak LR may keep it down"
OVERFIT_ADVICE = " (or use early stopping, more data, or regularisation)"


def _warming(history: History, steps: np.ndarray, low: int) -> bool:
    """Whether the validation loss was lowest at its first finite evaluation and rose while the LR still rose (a
    warmup to a peak too high is as likely a cause as overfitting: a hint, with a lower peak LR)."""
    if history.val_loss is None:
        return False
    finite = np.flatnonzero(np.isfinite(history.val_loss.values))
    return len(finite) > 0 and low == int(finite[0]) and _lr_rose(history, float(steps[low]), float(steps[-1]))


def _worsening(v: Series) -> tuple[np.ndarray, np.ndarray, int, float] | None:
    """The finite evaluations, their steps, the low's position and the rise above it, where the validation loss
    worsened steadily from its low (see ``validation_worsened``); else None."""
    keep = np.isfinite(v.values)
    y, steps = v.values[keep], v.steps[keep]
    if len(y) < MIN_EVALUATIONS or (y <= 0).any() or swing(y) >= WORSENED_SWING:
        return None  # a validation loss that swings up and down is the oscillation detector's to name
    s = smooth3(y)
    low = int(np.argmin(s))
    rise = float((s[-1] - s[low]) / s[low])
    enough = OVERFIT_RISE if low == 0 else STRONG_RISE  # a validation never better than at its first is never healthy
    if rise < enough or low > LATE_LOW * (len(y) - 1) or rising_share(y[low:]) < STEADY_RISE:
        return None
    return y, steps, low, rise


def validation_worsened(history: History, shape: RunShape) -> list[Finding]:
    """A validation loss that ended ``STRONG_RISE`` or more above its low — from its very first evaluation, or
    after one not in the last quarter — across at least ``MIN_EVALUATIONS`` evaluations, while the logged metric
    did not keep improving: the model got worse on held-out data, whatever its training loss did. Never
    "healthy"; stop at the low. Rising from the first evaluation while the LR still rose (a warmup) hints at a
    too-high LR."""
    v = history.val_loss
    found = None if v is None or shape.diverged else _worsening(v)
    if v is None or found is None:
        return []
    y, steps, low, rise = found
    if metric_later(history, float(steps[low])) is not None:
        return []  # the metric kept improving: detect_metric_disagrees says so
    i = int(np.flatnonzero(np.isfinite(v.values))[low])
    where, remedy, stop = stop_at(history, shape, i)
    warming = low == 0 and _lr_rose(history, float(steps[0]), float(steps[-1]))
    evidence = (f"validation loss was lowest ({y[low]:.4g}) at {where} and ended at {y[-1]:.4g}, {rise:.0%} above "
                f"its low by its trend" + (WARMING if warming else ""))
    return [Finding("overfitting", float(steps[low]), float(steps[-1]), evidence, 0.6, remedy,
                    f"{stop}, where validation loss was lowest" + (WARMING_ADVICE if warming else OVERFIT_ADVICE),
                    lr="lower" if warming else None, sure=False)]


def _lr_rose(history: History, start: float, end: float) -> bool:
    """Whether the logged LR rose between two steps (a warmup still under way)."""
    lr = history.lr
    if lr is None or len(lr) < 2:
        return False
    inside = lr.values[(lr.steps >= start) & (lr.steps <= end) & np.isfinite(lr.values)]
    return len(inside) >= 2 and float(inside[-1]) > 1.5 * float(inside[0])


def detect_metric_disagrees(history: History, shape: RunShape, th: Thresholds) -> list[Finding]:
    """Validation loss rising from its low while the logged metric goes on improving clearly: the model grows
    over-confident while it gets more answers right. Stop by the metric (``metric_for_best_model``), not the loss."""
    found = validation_rise(history, shape)
    if found is None or history.val_loss is None or history.val_metric is None:
        return []
    v, m = history.val_loss, history.val_metric
    later = metric_later(history, float(v.steps[found.low]))
    if later is None:
        return []
    at, best = later
    name = history.metric_name or "metric"
    metric_where = _where(history, shape, m, best)
    evidence = (f"validation loss was lowest ({v.values[found.low]:.4g}) at {_where(history, shape, v, found.low)} "
                f"and ended at {v.values[-1]:.4g}, but {name} kept improving: {m.values[at]:.4g} there, best "
                f"{m.values[best]:.4g} at {metric_where}")
    remedy = {"metric_for_best_model": name, "greater_is_better": history.higher_is_better,
              "load_best_model_at_end": True}
    return [Finding("metric_disagrees", float(v.steps[found.low]), float(m.steps[best]), evidence, 0.7, remedy,
                    f"choose the checkpoint by {name}, not by the loss: its best was at {metric_where}")]


def validation_blew_up(history: History) -> tuple[str, float, float] | None:
    """For a log whose training loss cannot say (too few points): a validation loss that jumps by
    ``WILD_SWING``× or more between most evaluations and ends above its first value is not training — the
    evidence, and the steps it spans; else None."""
    v = history.val_loss
    if v is None:
        return None
    y = v.values[np.isfinite(v.values)]
    if len(y) < MIN_EVALUATIONS or (y <= 0).any():
        return None
    typical = float(np.exp(median(np.abs(np.diff(np.log(y))))))
    if typical < WILD_SWING or y[-1] < y[0]:
        return None
    evidence = (f"validation loss jumped about {typical:.1f}× between typical evaluations, between {y.min():.4g} "
                f"and {y.max():.4g}, and ended at {y[-1]:.4g}, above its first value {y[0]:.4g}: it is not "
                "descending")
    m = history.val_metric
    if m is not None and len(m) >= MIN_EVALUATIONS:
        share = float(np.mean(m.values == median(m.values)))
        if share >= 0.5:
            name = history.metric_name or "the metric"
            evidence += f"; {name} sat at {median(m.values):.4g} in {share:.0%} of them"
    return evidence, float(v.steps[0]), float(v.steps[-1])


def _where(history: History, shape: RunShape, series: Series, i: int) -> str:
    epoch = _epoch_of(history, shape, series, i)
    step = series.steps[i]
    return f"epoch {epoch} (step {step:g})" if epoch is not None else f"evaluation {i + 1} (step {step:g})"


def _epoch_of(history: History, shape: RunShape, series: Series, i: int) -> int | None:
    """The epoch the ``i``-th point of a validation series closed, where the log says (or its rows are epochs)."""
    if shape.per_epoch:
        return int(series.steps[i] - history.train_loss.steps[0]) + 1
    epochs = history.val_epochs
    v = history.val_loss
    if epochs is None or v is None or len(epochs) != len(v):
        return None
    at = int(np.argmin(np.abs(v.steps - series.steps[i])))
    return int(epochs[at]) if epochs[at] >= 1 else None


def stop_at(history: History, shape: RunShape, i: int) -> tuple[str, dict[str, Any], str]:
    """Where the ``i``-th validation happened, and the remedy that stops training there: by epoch when the log
    counts epochs (or its rows are epochs), else by step (an evaluation is not an epoch)."""
    assert history.val_loss is not None
    v = history.val_loss
    epoch = _epoch_of(history, shape, v, i)
    if epoch is not None:
        return _where(history, shape, v, i), {"num_train_epochs": epoch}, f"stop at epoch {epoch}"
    step = v.steps[i]
    return (_where(history, shape, v, i), {"max_steps": int(step)},
            f"stop at step {step:g} (the log does not say which epoch that is)")


def detect_underfitting(history: History, shape: RunShape, th: Thresholds) -> list[Finding]:
    """Validation still improving when the run ended: it stopped too soon. Where the training loss also fell
    about as fast late as early under an undecayed LR, the LR is too low (a sign calibrated to be right)."""
    v = history.val_loss
    if v is None or len(v) < 3 or not np.isfinite(v.values).all():
        return _still_falling(history, shape, th)
    y = v.values
    total = y[0] - y.min()
    last = y[-2] - y[-1]
    if total <= 0 or int(np.argmin(y)) != len(y) - 1 or last < 0.1 * total:
        return _still_falling(history, shape, th) if validation_rise(history, shape) is None else []
    longer = train_longer(history, shape)
    evidence = (f"validation loss was still falling at the end: {y[-2]:.4g} → {y[-1]:.4g} in the last evaluation, "
                f"{last / total:.0%} of its whole improvement")
    slow = _slow_training(shape, th)
    if slow is not None and slow[1]:
        remedy, advice = lr_remedy(shape, 3.0)
        return [Finding("underfitting", float(v.steps[-2]), float(v.steps[-1]), evidence + slow[0], 0.7, remedy,
                        advice + f", or train longer ({longer[1]})", lr="raise")]
    if slow is not None:
        return [Finding("underfitting", float(v.steps[-2]), float(v.steps[-1]), evidence + slow[0], 0.6, longer[0],
                        f"train longer: {longer[1]} (a larger LR may also help; one log cannot tell)", lr="raise",
                        sure=False)]
    return [Finding("underfitting", float(v.steps[-2]), float(v.steps[-1]), evidence, 0.6, longer[0],
                    f"train longer: {longer[1]}")]


def _still_falling(history: History, shape: RunShape, th: Thresholds) -> list[Finding]:
    """Without validation to say so: a training loss under an undecayed LR still falling about as fast late as
    early — the LR is too low where that share is large enough to be sure, a hint where it is merely large."""
    c = shape.falls()
    slow = _slow_training(shape, th)
    if c is None or slow is None or c.late_share < th.too_low_share:
        return []
    evidence = (f"{c.late_share:.0%} of the training loss's decrease came in the second half (about {c.start:.4g} → "
                f"{c.end:.4g}): it is still falling about as fast as it was")
    longer = train_longer(history, shape)
    if slow[1]:
        remedy, advice = lr_remedy(shape, 3.0)
        return [Finding("underfitting", float(c.steps[len(c.steps) // 2]), float(c.steps[-1]), evidence, 0.5, remedy,
                        advice + ", or train longer", lr="raise")]
    return [Finding("underfitting", float(c.steps[len(c.steps) // 2]), float(c.steps[-1]), evidence, 0.4, longer[0],
                    f"train longer: {longer[1]} (a larger LR may also help; one log cannot tell)", lr="raise",
                    sure=False)]


def _slow_training(shape: RunShape, th: Thresholds) -> tuple[str, bool] | None:
    """Why an underfit run's LR looks too low — its training loss, under an undecayed LR, fell late or little —
    and whether that sign is sure (so late a share of the decrease that it has proved right); else None."""
    c = shape.falls()
    if c is None or c.end > c.start or shape.decayed or c.moved < th.plateau:
        return None
    if c.late_share >= th.too_low_share:
        late = f"; {c.late_share:.0%} of the training loss's decrease came in the second half"
        return late, c.late_share >= th.sure_late_share  # never on the runs measured: a slow start looks alike
    return (f"; the training loss fell only {c.moved:.0%} in the whole run", False) if c.moved < 0.3 else None


def train_longer(history: History, shape: RunShape) -> tuple[dict[str, Any], str]:
    """Twice the run, in epochs when the log counts them, else in steps."""
    epochs = history.val_epochs
    if shape.per_epoch:
        n = len(history.train_loss)
        return {"num_train_epochs": 2 * n}, f"{n} → {2 * n} epochs"
    if epochs is not None and len(epochs) and epochs[-1] >= 1:
        n = int(epochs[-1])
        return {"num_train_epochs": 2 * n}, f"{n} → {2 * n} epochs"
    logged = history.train_loss if len(history.train_loss) else history.val_loss  # a log of validation alone
    if logged is None or not len(logged):
        return {}, "a longer run"
    steps = int(logged.steps[-1])
    return {"max_steps": 2 * steps}, f"{steps} → {2 * steps} steps"
