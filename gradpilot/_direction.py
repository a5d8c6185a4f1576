"""Which way a metric is better: read from its name, and between two scores. Pure Python.

Every comparison of validation scores in gradpilot (early stopping, the search's promotions and its winner,
tune's schedule choice) goes through ``better`` or ``sort_key``, and every reading of a log's metric name
through ``lower_is_better``, so that "better" means one thing everywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

# words that mark a metric as lower-is-better where they appear in its name (``val_wer``, ``eval/rmse``)
LOWER_IS_BETTER = frozenset({"loss", "error", "err", "mse", "mae", "rmse", "perplexity", "ppl", "wer", "cer"})


def words(name: str) -> list[str]:
    """``"train/loss"`` → ``["train", "loss"]``; ``"lr-AdamW/pg1"`` → ``["lr", "adamw", "pg1"]``."""
    return [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]


def lower_is_better(name: str | Iterable[str]) -> bool:
    """Whether a metric of this name (or these words of it) is better when lower."""
    found = words(name) if isinstance(name, str) else name
    return bool(set(found) & LOWER_IS_BETTER)


def better(a: float, b: float, *, higher_is_better: bool, margin: float = 0.0) -> bool:
    """Whether score ``a`` beats ``b`` by more than ``margin``. A NaN never beats anything; anything finite
    beats a NaN."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b + margin if higher_is_better else a < b - margin


def worst(higher_is_better: bool) -> float:
    """The score that every other beats: what a run that diverged is scored."""
    return -math.inf if higher_is_better else math.inf


def sort_key(higher_is_better: bool) -> Callable[[float], float]:
    """A key that sorts scores best first (``sorted(scores, key=sort_key(True))``); NaN sorts last."""
    sign = -1.0 if higher_is_better else 1.0
    return lambda value: math.inf if math.isnan(value) else sign * value
