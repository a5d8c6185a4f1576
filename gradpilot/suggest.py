"""Rules that pick a learning rate from an LR range-test curve.

Every rule is a plain function ``rule(lrs, losses) -> lr`` over the swept learning rates and the
smoothed losses, in sweep order. Pure NumPy: no torch here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gradpilot.errors import GradpilotError

Rule = Callable[[np.ndarray, np.ndarray], float]


def _trim(lrs: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop the first tenth and the last few points, where the classic rules see only noise."""
    n = len(lrs)
    start, end = n // 10, max(n - 5, n // 10 + 2)
    return np.asarray(lrs[start:end], float), np.asarray(losses[start:end], float)


def steepest(lrs: np.ndarray, losses: np.ndarray) -> float:
    """The LR where the smoothed loss falls fastest per unit of log-LR."""
    x, y = _trim(lrs, losses)
    slopes = np.diff(y) / np.diff(np.log(x))
    return float(x[int(np.argmin(slopes))])


def minimum_div10(lrs: np.ndarray, losses: np.ndarray) -> float:
    """A tenth of the LR at the lowest smoothed loss."""
    x, y = _trim(lrs, losses)
    return float(x[int(np.argmin(y))] / 10)


def valley(lrs: np.ndarray, losses: np.ndarray) -> float:
    """fastai's valley: two-thirds of the way down the longest decreasing stretch of the curve."""
    x, y = _trim(lrs, losses)
    n = len(y)
    # length of the longest decreasing subsequence ending at each point
    run = np.ones(n, dtype=int)
    best_end = 0
    for i in range(1, n):
        earlier = y[:i] > y[i]
        if earlier.any():
            run[i] = run[:i][earlier].max() + 1
        if run[i] > run[best_end]:
            best_end = i
    best_start = best_end - run[best_end]
    third = (best_end - best_start) / 3
    return float(x[best_start + int(third) + int(third / 2)])


DEFAULT_RULE = "valley"

RULES: dict[str, Rule] = {
    "steepest": steepest,
    "valley": valley,
    "minimum/10": minimum_div10,
}


def get_rule(name: str) -> Rule:
    """Look a rule up by name; unknown names list the valid ones."""
    try:
        return RULES[name]
    except KeyError:
        raise GradpilotError(f"unknown suggestion rule {name!r}; choose one of {sorted(RULES)}") from None
