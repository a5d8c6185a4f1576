"""A run's curves in one shape, whatever wrote them: gradpilot's fit, or a log file read by ``gradpilot.logs``."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradpilot.errors import GradpilotError


@dataclass(frozen=True)
class Series:
    """Values logged at steps (or epochs), in step order."""

    steps: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class History:
    """A training run: train loss and LR per logged step, validation loss and metric per evaluation."""

    train_loss: Series
    val_loss: Series | None = None
    val_metric: Series | None = None
    metric_name: str | None = None
    higher_is_better: bool = True
    lr: Series | None = None
    epoch_steps: tuple[int, ...] = ()
    source: str = ""

    @classmethod
    def from_fit(cls, result: Any, *, metric_name: str | None = None, higher_is_better: bool = True) -> History:
        """The history of a ``gradpilot.fit`` run (a ``FitResult``)."""
        steps = np.arange(1, len(result.train_losses) + 1)
        at = np.array(result.epoch_steps[: len(result.val_losses)])
        has_metric = metric_name is not None and len(result.val_metrics) == len(at)
        return cls(
            train_loss=Series(steps, np.array(result.train_losses, float)),
            val_loss=Series(at, np.array(result.val_losses, float)) if len(at) else None,
            val_metric=Series(at, np.array(result.val_metrics, float)) if has_metric else None,
            metric_name=metric_name if has_metric else None,
            higher_is_better=higher_is_better,
            lr=Series(steps, np.array(result.lrs, float)) if result.lrs else None,
            epoch_steps=tuple(result.epoch_steps),
            source="gradpilot.fit",
        )


# --- recognising the columns users log -----------------------------------------------------------------------
STEP_NAMES = ("step", "global_step", "train_global_step", "iteration", "iter", "steps", "trainer_global_step")
EPOCH_NAMES = ("epoch", "epochs", "train_epoch")
VAL_TOKENS = {"val", "valid", "validation", "eval", "evaluation", "test", "dev"}
LOWER_IS_BETTER = {"loss", "error", "err", "mse", "mae", "rmse", "perplexity", "ppl", "wer", "cer"}
IGNORED = {"runtime", "samples_per_second", "steps_per_second", "flos", "grad_norm", "time", "timestamp"}


def tokens(name: str) -> list[str]:
    """``"train/loss"`` → ``["train", "loss"]``; ``"lr-AdamW/pg1"`` → ``["lr", "adamw", "pg1"]``."""
    return [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]


def classify(name: str) -> str | None:
    """What a logged column holds: ``step``, ``epoch``, ``train_loss``, ``train_loss_epoch``, ``val_loss``,
    ``val_metric``, ``lr``, or None for anything else."""
    norm = "_".join(tokens(name))
    toks = set(norm.split("_"))
    if norm in STEP_NAMES:
        return "step"
    if norm in EPOCH_NAMES:
        return "epoch"
    if any(norm.endswith(i) for i in IGNORED) or "runtime" in toks:
        return None
    if toks & {"lr", "learning"} and "loss" not in toks:
        return "lr"
    if "loss" in toks:
        if toks & VAL_TOKENS:
            return "val_loss"
        if "epoch" in toks:
            return "train_loss_epoch"
        return "train_loss"
    if toks & VAL_TOKENS and not toks & IGNORED:
        return "val_metric"
    return None


def from_records(records: Iterable[Mapping[str, Any]], source: str) -> History:
    """Build a history from logged rows (dicts of column → value, any order, sparse rows allowed)."""
    rows = list(records)
    columns: dict[str, list[str]] = {}
    for row in rows:
        for name in row:
            kind = classify(name)
            if kind is not None and name not in columns.setdefault(kind, []):
                columns[kind].append(name)
    train_col = (columns.get("train_loss") or columns.get("train_loss_epoch") or [None])[0]
    if train_col is None:
        names = sorted({n for row in rows for n in row})
        raise GradpilotError(f"{source}: no training-loss column among {names[:20]}: name it 'loss' or 'train_loss'")
    step_col = (columns.get("step") or columns.get("epoch") or [None])[0]
    metric_col = next((c for c in columns.get("val_metric", []) if not set(tokens(c)) & IGNORED), None)

    def series(col: str | None) -> Series | None:
        if col is None:
            return None
        pts = []
        for i, row in enumerate(rows):
            value = _number(row.get(col))
            if value is None:
                continue
            x = _number(row.get(step_col)) if step_col else None
            pts.append((x if x is not None else float(i), value))
        if not pts:
            return None
        pts.sort(key=lambda p: p[0])
        return Series(np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))

    train = series(train_col)
    if train is None or len(train) == 0:
        raise GradpilotError(f"{source}: the column {train_col!r} holds no numbers")
    lr_cols = sorted(columns.get("lr", []), key=lambda c: (("pg" in c.lower()) and not c.lower().endswith("pg1"), c))
    higher = metric_col is not None and not set(tokens(metric_col)) & LOWER_IS_BETTER
    return History(
        train_loss=train,
        val_loss=series((columns.get("val_loss") or [None])[0]),
        val_metric=series(metric_col),
        metric_name=metric_col,
        higher_is_better=higher,
        lr=series(lr_cols[0] if lr_cols else None),
        source=source,
    )


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None

