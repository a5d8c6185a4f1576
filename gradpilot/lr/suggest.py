"""Rules that pick a learning rate from an LR range-test curve.

Every rule is a plain function ``rule(curve) -> lr``. Pure NumPy: no torch here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gradpilot.diagnosis.signal import centred_smooth, robust_noise
from gradpilot.errors import GradpilotError


@dataclass(frozen=True)
class Curve:
    """A range test's finite points: LRs, raw and smoothed losses, and the optimizer family."""

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    family: Literal["sgd", "adaptive"] = "adaptive"  # see scaling.optimizer_family
    momentum: float = 0.0  # SGD's momentum or Adam's beta1: how many steps late the sweep sees its LR act


def momentum_of(group: Mapping[str, Any]) -> float:
    """The momentum of an optimizer's param group: SGD's ``momentum`` or the first of Adam's ``betas``."""
    if "betas" in group:
        return float(group["betas"][0])
    return float(group.get("momentum", 0.0) or 0.0)


Rule = Callable[[Curve], float]


def _trim(curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    """Drop the first tenth and the last few points, where the classic rules see only noise."""
    n = len(curve.lrs)
    start, end = n // 10, max(n - 5, n // 10 + 2)
    return curve.lrs[start:end], curve.smoothed[start:end]


def steepest(curve: Curve) -> float:
    """The LR where the smoothed loss falls fastest per unit of log-LR."""
    x, y = _trim(curve)
    slopes = np.diff(y) / np.diff(np.log(x))
    return float(x[int(np.argmin(slopes))])


def minimum_div10(curve: Curve) -> float:
    """A tenth of the LR at the lowest smoothed loss."""
    x, y = _trim(curve)
    return float(x[int(np.argmin(y))] / 10)


def valley(curve: Curve) -> float:
    """fastai's valley: two-thirds of the way down the longest decreasing stretch of the curve."""
    x, y = _trim(curve)
    run = np.ones(len(y), dtype=int)  # longest decreasing subsequence ending at each point
    best_end = 0
    for i in range(1, len(y)):
        earlier = y[:i] > y[i]
        if earlier.any():
            run[i] = run[:i][earlier].max() + 1
        if run[i] > run[best_end]:
            best_end = i
    best_start = best_end - run[best_end]
    third = (best_end - best_start) / 3
    return float(x[best_start + int(third) + int(third / 2)])


def descent_edge(curve: Curve) -> float:
    """gradpilot's rule: read the descent and the edge of stability off a noise-aware fit of the curve.

    1. Smooth the raw losses without lag and measure how noisy the smoothed curve still is.
    2. Edge: the largest LR whose smoothed loss is still within noise of the minimum. The smoothing
       reaches a little into the blow-up, so this edge errs low: a safe side that the benchmark confirms.
    3. SGD steps by lr × gradient, so progress grows with the LR up to the edge: take half the edge.
    4. Adaptive optimizers normalise their steps and blow up late: take the middle (in log-LR) of the
       last descent, from where the loss leaves its starting plateau to its minimum.
    5. No descent clearly above the noise: a fifth of the edge.
    """
    lrs, y = curve.lrs, curve.losses
    width = max(2.0, len(y) / 25)
    s = centred_smooth(y, width)
    noise = robust_noise(y, s) / math.sqrt(2 * math.sqrt(math.pi) * width)
    low_i = int(np.argmin(s))
    low = s[low_i]
    edge = lrs[int(np.flatnonzero(s <= low + 3 * noise)[-1])]
    if curve.family == "sgd":
        return float(edge / 2)
    plateau = float(np.median(y[: max(5, len(y) // 5)]))
    drop = plateau - low
    if drop <= 4 * noise:
        return float(edge / 5)
    # walk back from the minimum to where the loss was still (within noise) on its plateau
    start_level = max(low + drop / 2, plateau - max(0.1 * drop, 2 * noise))
    j = low_i
    while j > 0 and s[j] < start_level:
        j -= 1
    return float(math.sqrt(lrs[j] * lrs[low_i]))


@dataclass(frozen=True)
class Margins:
    """How far below the edge of stability the safe pick stays, in decades of LR: ``base``, plus ``per_lag``
    for each decade the sweep's LR grew while the momentum still carried older steps, plus ``per_spread``
    times the edge's own uncertainty. Fitted on the benchmark corpus (benchmarks/lr_suggestion.py)."""

    base: float = 0.0
    per_lag: float = 1.0
    per_spread: float = 0.0  # fitted to 0: on the corpus, a wider margin for a blurred edge only lost speed


MARGINS = Margins()


@dataclass(frozen=True)
class Reading:
    """What a curve says: the safe pick, the interval of LRs it supports, and how sure it is (0 to 1)."""

    suggestion: float
    interval: tuple[float, float]
    confidence: float
    edge: float  # the largest LR whose loss is within noise of the curve's minimum
    edge_seen: bool  # False when the loss never rose: the edge is then only a lower bound
    caveat: str = ""


@dataclass(frozen=True)
class _Shape:
    """The measurements every reading starts from."""

    smooth: np.ndarray
    noise: float
    low: int  # index of the smoothed minimum
    edge: int  # index of the edge of stability
    spread: float  # the edge's uncertainty, in decades
    seen: bool


def _shape(curve: Curve) -> _Shape:
    lrs, y = curve.lrs, curve.losses
    width = max(2.0, len(y) / 25)
    s = centred_smooth(y, width)
    noise = robust_noise(y, s) / math.sqrt(2 * math.sqrt(math.pi) * width)
    low = int(np.argmin(s))
    edge = int(np.flatnonzero(s <= s[low] + 3 * noise)[-1])
    seen = edge < len(y) - 1 and s[-1] > s[low] + 6 * noise
    # the edge is where the curve crosses min + 3 noise: one noise up or down moves it by noise / slope
    after = min(len(y) - 1, edge + max(2, round(width)))
    rise = (s[after] - s[edge]) / max(math.log10(lrs[after] / lrs[edge]), 1e-12)
    spread = min(1.0, noise / rise) if rise > 0 else 1.0
    return _Shape(s, noise, low, edge, spread, seen)


MAX_LAG = 1.0  # decades: a short sweep grows its LR so fast per step that the lag would sink the pick orders down
# (tune's 31-step sweeps: 2.3 decades at beta 0.9); the benchmark's 100-step sweeps stay under it (0.73)


def _lag(curve: Curve) -> float:
    """Decades the LR grows over the momentum's mean age (beta / (1 - beta) steps): the sweep sees an LR's
    effect that many decades late, so its edge lies that much above where a long run stays stable."""
    if len(curve.lrs) < 2 or curve.momentum <= 0:
        return 0.0
    per_step = math.log10(curve.lrs[1] / curve.lrs[0])
    return min(MAX_LAG, per_step * curve.momentum / (1 - min(curve.momentum, 0.999)))


def read(curve: Curve, margins: Margins = MARGINS) -> Reading:
    """gradpilot's reading: a safe pick below the edge, the interval the curve supports, and a confidence.

    The pick is the lower of two: the geometric mean of the descent-edge and valley picks (two readings of
    where the descent is steep that err in different directions), and the edge lowered by a margin that
    grows with the momentum's lag and the edge's uncertainty — overshooting the edge loses the run, while
    undershooting only slows it.
    """
    shape = _shape(curve)
    edge = float(curve.lrs[shape.edge])
    steep, third = descent_edge(curve), valley(curve)
    margin = margins.base + margins.per_lag * _lag(curve) + margins.per_spread * shape.spread
    pick = min(math.sqrt(steep * third), edge * 10**-margin)
    lo = min(pick, steep, third) / math.sqrt(10)
    hi = edge * math.sqrt(10) if shape.seen else edge * 10  # a sweep sees its edge up to half a decade off
    confidence, caveat = _confidence(curve, shape, abs(math.log10(steep / third)) / 2)
    return Reading(pick, (lo, max(hi, pick)), confidence, edge, shape.seen, caveat)


def _confidence(curve: Curve, shape: _Shape, disagreement: float) -> tuple[float, str]:
    """1 when the descent stands clear of the noise, the edge is sharp and the readings agree; lower otherwise,
    with the reason."""
    plateau = float(np.median(curve.losses[: max(5, len(curve.losses) // 5)]))
    drop = plateau - float(shape.smooth[shape.low])
    clear = min(1.0, max(0.0, drop / (20 * shape.noise) if shape.noise > 0 else 1.0))
    score = clear * (1 - shape.spread / 2) * max(0.0, 1 - disagreement) * (1.0 if shape.seen else 0.5)
    reasons = [why for bad, why in (
        (clear < 0.5, "the descent barely stands out of the noise"),
        (not shape.seen, "the loss never rose: the edge lies beyond the sweep"),
        (disagreement > 0.5, "its two readings of the descent lie more than a decade apart"),
        (shape.spread > 0.5, "the edge is blurred by noise"),
    ) if bad]
    return round(float(score), 3), "; ".join(reasons)


def safe_edge(curve: Curve) -> float:
    """gradpilot's default: the pick of ``read`` (see there)."""
    return read(curve).suggestion


RuleName = Literal["safe-edge", "descent-edge", "valley", "steepest", "minimum/10"]
DEFAULT_RULE: RuleName = "safe-edge"

RULES: dict[str, Rule] = {
    "safe-edge": safe_edge,
    "descent-edge": descent_edge,
    "valley": valley,
    "steepest": steepest,
    "minimum/10": minimum_div10,
}


def get_rule(name: str) -> Rule:
    """Look a rule up by name; unknown names list the valid ones."""
    try:
        return RULES[name]
    except KeyError:
        raise GradpilotError(f"unknown suggestion rule {name!r}; choose one of {sorted(RULES)}") from None
