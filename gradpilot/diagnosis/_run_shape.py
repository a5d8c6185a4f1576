"""What diagnosis measures on a run's curves, shared by every detector, and the constants it is calibrated by.

NumPy only: ``gradpilot diagnose`` never imports torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradpilot.diagnosis.history import History
from gradpilot.diagnosis.signal import centred_smooth, median, robust_noise

MIN_POINTS = 8  # logged training losses needed to judge a curve's shape


@dataclass(frozen=True)
class Thresholds:
    """The constants diagnosis is calibrated by (benchmarks/diagnose.py fits them leave-one-family-out)."""

    too_low_share: float = 0.25  # share of the progress still in the second half: the LR, not stability, limits it
    sure_late_share: float = math.inf  # ... a share that says the LR is too low: none is right ≥ 90 % of the time
    plateau: float = 0.03  # a loss that moved less than this share of its start has not trained
    chance: float = 0.01  # a loss within this share of ln(k) for k classes sits at chance
    rise: float = 1.0  # a loss that ends this many noise widths (and 2%) above its start has diverged
    swing: float = 1.0  # validation whose scatter is this many times its trend's whole movement swings
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
        """Share of the run's decrease that came in its second half (medians of the logged losses at the start,
        the middle and the end: 0.5 for a straight line): high when progress, not stability, limits it."""
        y, n = self.raw, len(self.raw)
        half = max(3, n // 20) // 2
        centres = {(n - 1) // 2, n // 2}  # the middle point, or the two around the middle
        middle = float(np.mean([median(y[max(0, c - half): c + half + 1]) for c in centres]))
        share = (middle - self.end) / max(self.start - self.end, 1e-12)
        return float(np.clip(share, -1.0, 1.5))  # a loss that never fell has no meaningful share: keep it bounded

    @property
    def early_jump(self) -> float:
        """The highest loss in the first tenth of the run, in multiples of the first logged loss (a high first
        loss that then falls is descent, not a jump: it gives at most 1)."""
        head = self.raw[: max(3, len(self.raw) // 10)]
        return float(np.max(head) / max(abs(float(self.raw[0])), 1e-12))

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


def curve(values: np.ndarray, steps: np.ndarray) -> Curve | None:
    keep = usable(values)
    n = len(keep)
    if n < MIN_POINTS:
        return None
    y, x = values[keep], steps[keep]
    s = centred_smooth(y, max(2.0, n / 40))
    edge = max(3, n // 20)
    low_i = int(np.argmin(s))
    return Curve(x, y, s, robust_noise(y, s), float(median(y[:edge])), float(median(y[-edge:])),
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
SWING_SHARE = 0.05  # scatter under this share of a series' level (a metric) or of the training's progress is jitter


def point_noise(values: np.ndarray) -> float:
    """The scatter of one point of a series around its neighbours (robust: from the median absolute
    second difference, so a trend, a spike or a rise does not count as noise)."""
    a = values[np.isfinite(values)]
    if len(a) < 3:
        return 0.0
    bend = a[1:-1] - (a[:-2] + a[2:]) / 2  # white noise of width s gives bends of width s·√1.5
    return 1.4826 * float(median(np.abs(bend))) / math.sqrt(1.5)


def swing(values: np.ndarray) -> float:
    """How much a validation series goes up and down next to where it is going: the scatter of one evaluation
    around its neighbours over the whole movement of its trend. Small for a series that improves, even noisily
    over many evaluations, or rises then falls; about 1 or more for one that mostly goes up and down."""
    a = values[np.isfinite(values)]
    if len(a) < MIN_EVALUATIONS:
        return 0.0
    trend = centred_smooth(a, max(1.0, len(a) / 10))
    return point_noise(a) / max(float(np.ptp(trend)), 1e-12)


def swinging(history: History, train: Curve | None, th: Thresholds) -> tuple[str, np.ndarray, float] | None:
    """The first validation series (metric, then loss) that swings by at least ``Thresholds.swing``: its name, its
    finite values and the size of the swing. The scatter must also be large against the series' level — a
    metric's typical value, or how far the training loss came down — so that a score jittering at its best is
    not taken for a swing."""
    found = []
    if history.val_metric is not None:
        v = history.val_metric.values
        level = float(median(np.abs(v[np.isfinite(v)]))) if np.isfinite(v).any() else 0.0
        found.append((history.metric_name or "metric", v, level))
    if history.val_loss is not None and train is not None:
        found.append(("loss", history.val_loss.values, train.scale))
    for name, values, level in found:
        size = swing(values)
        if size >= th.swing and point_noise(values) >= SWING_SHARE * level:
            return name, values[np.isfinite(values)], size
    return None


def descends(values: np.ndarray) -> bool:
    """Whether the objective is a loss that training drives down towards a floor of 0 (cross-entropy, squared
    error, ...): an adversarial critic's or a policy's loss goes negative, and its rises are no divergence."""
    finite = values[np.isfinite(values)]
    return not len(finite) or float(finite.min()) >= 0.0


def rows_are_epochs(history: History) -> bool:
    """Whether each logged point is an epoch (a Keras CSVLogger file, a per-epoch TensorBoard log): the log's
    steps are then epoch numbers, and remedies speak in epochs, never in optimizer steps."""
    v, t = history.val_loss, history.train_loss
    if history.epoch_steps or v is None or len(v) != len(t) or len(t) < 2:
        return False
    steps = t.steps
    return bool(np.array_equal(v.steps, steps) and np.all(np.diff(steps) == 1) and steps[0] in (0, 1))


@dataclass(frozen=True)
class RunShape:
    """What every detector needs to know about a run, measured once per diagnosis."""

    curve: Curve | None  # the training loss's curve (None: too few points)
    peak_lr: float | None
    constant_lr: bool
    decayed: bool  # the LR ended below half its peak
    descends: bool  # the objective is a loss that falls towards 0
    per_epoch: bool  # each logged row is an epoch
    diverged: bool = False  # set by ``with_divergence`` once the divergence rule has run

    def falls(self) -> Curve | None:
        """The training curve, where its shape can say anything about the LR (a descending loss)."""
        return self.curve if self.descends else None


def shape_of(history: History) -> RunShape:
    """A run's shape, measured once."""
    peak, constant = peak_lr(history)
    return RunShape(curve(history.train_loss.values, history.train_loss.steps), peak, constant, decayed(history),
                    descends(history.train_loss.values), rows_are_epochs(history))
