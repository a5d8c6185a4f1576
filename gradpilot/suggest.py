"""Rules that pick a learning rate from an LR range-test curve.

Every rule is a plain function ``rule(curve) -> lr``. Pure NumPy: no torch here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from gradpilot._signal import centred_smooth, robust_noise
from gradpilot.errors import GradpilotError


@dataclass(frozen=True)
class Curve:
    """A range test's finite points: LRs, raw and smoothed losses, and the optimizer family."""

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    family: Literal["sgd", "adaptive"] = "adaptive"  # see scaling.optimizer_family


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


RuleName = Literal["descent-edge", "valley", "steepest", "minimum/10"]
DEFAULT_RULE: RuleName = "descent-edge"

RULES: dict[str, Rule] = {
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
