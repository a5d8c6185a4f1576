"""What diagnosis measures on a run's curves, shared by every detector, and the constants it is calibrated by.

NumPy only: ``gradpilot diagnose`` never imports torch.
"""

from __future__ import annotations

import dataclasses
import math
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradpilot._signal import centred_smooth, robust_noise
from gradpilot.history import History

MIN_POINTS = 8  # logged training losses needed to judge a curve's shape


@dataclass(frozen=True)
class Thresholds:
    """The constants diagnosis is calibrated by (benchmarks/diagnose.py fits them leave-one-family-out)."""

    too_low_share: float = 0.25  # share of the progress still in the second half: the LR, not stability, limits it
    plateau: float = 0.03  # a loss that moved less than this share of its start has not trained
    chance: float = 0.01  # a loss within this share of ln(k) for k classes sits at chance
    rise: float = 1.0  # a loss that ends this many noise widths (and 2%) above its start has diverged
    swing: float = 1.0  # validation that reverses by this many times its range, beyond one rise and fall, swings
    # what the remedy multiplies the LR by (fitted on how much of the lost performance a re-run wins back):
    cut_broken: float = 0.03  # a run the LR broke: a NaN, a loss that came back or sits at chance
    cut_diverged: float = 0.03  # a loss that climbed back above where it began
    cut_oscillating: float = 0.03  # a loss or validation score that swings

    def replace(self, **changes: Any) -> Thresholds:
        return dataclasses.replace(self, **changes)


THRESHOLDS = Thresholds()
CALIBRATED = ("too_low_share", "plateau", "chance", "rise", "swing")
CALIBRATION_GRID: dict[str, tuple[float, ...]] = {
    "too_low_share": (0.25, 1 / 3, 0.4),
    "plateau": (0.03, 0.05),
    "chance": (0.01, 0.02),
    "rise": (0.5, 1.0, 2.0),
    "swing": (0.7, 1.0, 1.5, math.inf),
}
REMEDIES = ("cut_broken", "cut_diverged", "cut_oscillating")
REMEDY_GRID = (0.5, 0.3, 0.1, 0.03)
_ACTIVE: ContextVar[Thresholds] = ContextVar("gradpilot_thresholds", default=THRESHOLDS)


def thresholds() -> Thresholds:
    """The thresholds of the ``diagnose`` call under way."""
    return _ACTIVE.get()


@dataclass(frozen=True)
class Curve:
    steps: np.ndarray
    raw: np.ndarray
    smooth: np.ndarray
    noise: float  # of one logged point around the trend
    start: float  # typical loss at the start
    end: float  # typical loss at the end
    low: float  # lowest point of the trend
    low_step: float

    @property
    def scale(self) -> float:
        """How far the loss came down: the yardstick for noise and spikes (relative to the loss itself they
        blow up as the loss nears zero)."""
        return max(self.start - self.low, 1e-12)

    @property
    def late_share(self) -> float:
        """Share of the run's decrease that came in its second half: high when progress, not stability, limits it."""
        s = self.smooth
        share = (s[len(s) // 2] - s[-1]) / max(s[0] - s[-1], 1e-12)
        return float(np.clip(share, -1.0, 1.5))  # a loss that never fell has no meaningful share: keep it bounded

    @property
    def early_jump(self) -> float:
        """The highest loss in the first tenth of the run, in multiples of the first losses."""
        head = self.raw[: max(3, len(self.raw) // 10)]
        return float(np.max(head) / max(abs(float(np.median(self.raw[:3]))), 1e-12))

    @property
    def spikes(self) -> int:
        """Points at over three times the trend and half the run's progress above it."""
        return int(np.sum((self.raw > 3 * np.abs(self.smooth)) & (self.raw - self.smooth > 0.5 * self.scale)))

    @property
    def moved(self) -> float:
        """How far the loss came down from start to end (medians of the first and last twentieth: unlike the
        trend's lowest point, neither is pulled down by noise), as a share of the starting loss."""
        return max(0.0, self.start - self.end) / max(abs(self.start), 1e-12)


def usable(values: np.ndarray) -> np.ndarray:
    """Indices of the finite losses before the run went non-finite for good; a NaN the run recovered from
    (an fp16 overflow skipped by the scaler, a bad batch) is left out rather than ending the curve."""
    finite = np.isfinite(values)
    end = len(values)
    while end and not finite[end - 1]:
        end -= 1
    return np.flatnonzero(finite[:end])


MEMO: ContextVar[dict[int, tuple[np.ndarray, Curve | None]] | None] = ContextVar("gradpilot_curves", default=None)


def train_curve(history: History) -> Curve | None:
    """The training loss's curve; within one ``diagnose`` call it is measured once, not once per detector."""
    values, memo = history.train_loss.values, MEMO.get()
    if memo is not None and id(values) in memo and memo[id(values)][0] is values:
        return memo[id(values)][1]
    found = curve(values, history.train_loss.steps)
    if memo is not None:
        memo[id(values)] = (values, found)
    return found


def curve(values: np.ndarray, steps: np.ndarray) -> Curve | None:
    keep = usable(values)
    n = len(keep)
    if n < MIN_POINTS:
        return None
    y, x = values[keep], steps[keep]
    s = centred_smooth(y, max(2.0, n / 40))
    edge = max(3, n // 20)
    low_i = int(np.argmin(s))
    return Curve(x, y, s, robust_noise(y, s), float(np.median(y[:edge])), float(np.median(y[-edge:])),
                  float(s[low_i]), float(x[low_i]))


def peak_lr(history: History) -> tuple[float | None, bool]:
    """The run's peak LR, and whether it was held constant."""
    if history.lr is None or not len(history.lr):
        return None, False
    v = history.lr.values[np.isfinite(history.lr.values)]
    if not len(v):
        return None, False
    return float(v.max()), bool(v.min() >= 0.99 * v.max())


def decayed(history: History) -> bool:
    """Whether the LR ended below half its peak: late progress may then be the decay's, not a sign of a low LR."""
    if history.lr is None or not len(history.lr):
        return False
    v = history.lr.values[np.isfinite(history.lr.values)]
    return bool(len(v)) and float(v[-1]) < 0.5 * float(v.max())


MIN_EVALUATIONS = 5  # validation points needed to tell swings from one rise and fall


def swing(values: np.ndarray) -> float:
    """How far a validation series (higher is better) went up and down beyond one rise and one fall, in multiples
    of its range: 0 for a series that only rose, only fell, or rose then fell (learning, then overfitting); 1 for
    one extra reversal across the whole range."""
    a = values[np.isfinite(values)]
    if len(a) < MIN_EVALUATIONS:
        return 0.0
    top, span = float(a.max()), float(a.max() - a.min())
    if span <= 1e-12:
        return 0.0
    travel = float(np.sum(np.abs(np.diff(a))))
    return max(0.0, (travel - (top - float(a[0])) - (top - float(a[-1]))) / span)


SWING_SHARE = 0.1  # reversals smaller than this share of the yardstick are evaluation noise, not swings


def swinging(history: History) -> tuple[str, np.ndarray, float] | None:
    """The first validation series (metric, then loss) that swings by at least ``Thresholds.swing``: its name, its
    finite values and the size of the swing. The reversals must also be large in absolute terms — a tenth of
    the metric's typical value, or of how far the training loss came down — so that a validation score
    already flat at its best, which jitters across its own tiny range, is not taken for a swing."""
    found = []
    if history.val_metric is not None:
        sign = 1.0 if history.higher_is_better else -1.0
        v = history.val_metric.values
        level = float(np.median(np.abs(v[np.isfinite(v)]))) if np.isfinite(v).any() else 0.0
        found.append((history.metric_name or "metric", v, sign, level))
    train = train_curve(history)
    if history.val_loss is not None and train is not None:
        found.append(("loss", history.val_loss.values, -1.0, train.scale))
    for name, values, sign, yardstick in found:
        finite = values[np.isfinite(values)]
        size = swing(sign * values)
        excess = size * float(np.ptp(finite)) if len(finite) else 0.0
        if size >= thresholds().swing and excess >= SWING_SHARE * yardstick:
            return name, finite, size
    return None
