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
LOWER_IS_BETTER = frozenset({"loss", "error", "err", "mse", "mae", "rmse", "perplexity", "ppl", "wer", "cer", "nll",
                             "mape", "smape", "rmsle", "msle", "distance", "regret", "fid"})
# ... and as higher-is-better (``val_acc``, ``eval_f1``, ``rouge1``); a name with neither is not guessed
HIGHER_IS_BETTER = frozenset({"higher", "acc", "accuracy", "f1", "auc", "auroc", "roc", "bleu", "sacrebleu", "rouge",
                              "rouge1", "rouge2", "rougel", "rougelsum", "map", "iou", "miou", "dice", "precision",
                              "recall", "r2", "ndcg", "mrr", "em", "exact", "top1", "top5", "correct", "chrf",
                              "meteor", "spearman", "pearson", "kappa", "mcc", "psnr", "ssim", "hit", "hits", "fbeta"})


def words(name: str) -> list[str]:
    """``"train/loss"`` → ``["train", "loss"]``; ``"lr-AdamW/pg1"`` → ``["lr", "adamw", "pg1"]``."""
    return [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]


def lower_is_better(name: str | Iterable[str]) -> bool:
    """Whether a metric of this name (or these words of it) is better when lower."""
    found = words(name) if isinstance(name, str) else name
    return bool(set(found) & LOWER_IS_BETTER)


def named_direction(name: str) -> bool | None:
    """Whether a metric is better higher, where its name says so unambiguously (``val_acc``: True, ``eval_wer``:
    False); None for a name that does not say (``val_metric``, ``score``) — that is never guessed."""
    found = set(words(name))
    lower, higher = bool(found & LOWER_IS_BETTER), bool(found & HIGHER_IS_BETTER)
    return None if lower == higher else higher


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
