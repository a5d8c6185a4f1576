"""Recognising the columns users log, and building a ``History`` from logged rows.

Rows stream in one at a time; only the columns diagnosis reads are kept, as float arrays, so a log of
millions of rows costs a few bytes a row (not a dict a row).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from gradpilot._direction import named_direction, words
from gradpilot.diagnosis.history import History, Series
from gradpilot.errors import GradpilotError

STEP_NAMES = ("step", "global_step", "train_global_step", "iteration", "iter", "steps", "trainer_global_step")
EPOCH_NAMES = ("epoch", "epochs", "train_epoch")
VAL_TOKENS = {"val", "valid", "validation", "eval", "evaluation", "test", "dev"}
IGNORED = {"runtime", "samples_per_second", "steps_per_second", "flos", "grad_norm", "time", "timestamp"}


def classify(name: str) -> str | None:
    """What a logged column holds: ``step``, ``epoch``, ``train_loss``, ``train_loss_epoch``, ``val_loss``,
    ``val_metric``, ``lr``, or None for anything else."""
    norm = "_".join(words(name))
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
        return _loss_kind(toks)
    if toks & VAL_TOKENS and not toks & IGNORED:
        return "val_metric"
    return None


WHOLE_LOSS = {"train", "training", "loss", "total", "epoch", "step", "avg", "mean", "batch", "objective", "sum"}


def whole_loss(name: str) -> bool:
    """Whether a training-loss column is the whole objective (``loss``, ``train_loss``, ``total_loss``), not a
    component of it (``loss_box_reg``, ``cls_loss``, ``train_domain_loss``)."""
    return set(words(name)) <= WHOLE_LOSS


def _loss_kind(toks: set[str]) -> str:
    if toks & VAL_TOKENS:
        return "val_loss"
    return "train_loss_epoch" if "epoch" in toks else "train_loss"


def number(value: Any) -> float | None:
    """A logged value as a float: None for an empty cell or text, NaN/inf as they are, huge ints as inf."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
    except (TypeError, ValueError):
        return None


class Columns:
    """The columns of a log that diagnosis reads, filled row by row."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.rows = 0
        self.start = 0  # the first row of the run read (the last, where several are appended)
        self.kinds: dict[str, str | None] = {}
        self.order: dict[str, list[str]] = {}  # kind -> its columns, in order of appearance
        self.index: dict[str, array[int]] = {}
        self.values: dict[str, array[float]] = {}
        self.names: dict[str, None] = {}  # every column seen, for the error message

    def kind(self, name: str) -> str | None:
        """The column's kind (cached: classifying is the costly part of a row)."""
        if name not in self.kinds:
            kind = classify(name)
            self.kinds[name] = kind
            if len(self.names) < 50:
                self.names[name] = None
            if kind is not None:
                self.order.setdefault(kind, []).append(name)
                self.index[name], self.values[name] = array("q"), array("d")
        return self.kinds[name]

    def add(self, row: Mapping[str, Any], where: str = "") -> None:
        """Keep the numbers of one logged row; text in a column diagnosis reads is an error naming ``where``."""
        for name, value in row.items():
            if not isinstance(name, str) or self.kind(name) is None:
                continue
            x = number(value)
            if x is None:
                if isinstance(value, str) and value.strip() and where:
                    if "\ufffd" in value:
                        raise GradpilotError(f"{where}: {name!r} holds bytes that are not UTF-8 text (a corrupt file?)")
                    raise GradpilotError(f"{where}: {name!r} is {value.strip()[:40]!r}, not a number")
                continue
            self.index[name].append(self.rows)
            self.values[name].append(x)
        self.rows += 1

    def history(self, warnings: Iterable[str] = ()) -> History:
        """The run these rows describe."""
        val_col = self._first("val_loss")
        train_col = self._train_column()
        if train_col is None and val_col is None:
            raise GradpilotError(f"{self.source}: no training-loss column among {sorted(self.names)[:20]}: "
                                 "name it 'loss' or 'train_loss'")
        x_col = self._first("step") or self._first("epoch")
        x = self._dense(x_col)
        warnings = [*warnings, *self._keep_last_run(x, x_col or "row", train_col or str(val_col))]
        train = self._training(train_col, val_col, x, warnings)
        metric_col = next((c for c in self.order.get("val_metric", []) if not set(words(c)) & IGNORED), None)
        lr_cols = sorted(self.order.get("lr", []),  # the first param group's LR: "lr-AdamW" or ".../pg1"
                         key=lambda c: (("pg" in c.lower()) and not c.lower().endswith("pg1"), c))
        val_loss, val_metric = self._series(val_col, x), self._series(metric_col, x)
        higher, basis = metric_direction(metric_col, val_metric, val_loss)
        return History(
            train_loss=train,
            val_loss=val_loss,
            val_metric=val_metric,
            metric_name=metric_col,
            higher_is_better=higher,
            metric_direction=basis,
            lr=self._series(lr_cols[0] if lr_cols else None, x),
            source=self.source,
            val_epochs=self._epochs_at(val_col, x),
            warnings=tuple(warnings),
        )

    def _training(self, train_col: str | None, val_col: str | None, x: np.ndarray, warnings: list[str]) -> Series:
        """The training loss; none (said in ``warnings``) for a log of validation loss alone."""
        if train_col is not None:
            train = self._series(train_col, x)
            if train is None:
                raise GradpilotError(f"{self.source}: the column {train_col!r} holds no numbers")
            return train
        if self._series(val_col, x) is None:
            raise GradpilotError(f"{self.source}: no training-loss column, and {val_col!r} holds no numbers: log the "
                                 "training loss as 'loss' or 'train_loss'")
        warnings.append(f"{self.source}: no training-loss column, so the run is judged from its validation loss "
                        f"({val_col!r}) alone; log the training loss as 'loss' or 'train_loss' to judge more")
        return Series(np.zeros(0), np.zeros(0))

    def _keep_last_run(self, x: np.ndarray, name: str, train_col: str) -> list[str]:
        """Where the step (or epoch) of the training-loss rows goes back, the file holds several runs appended
        one after another: keep the last, never a splice of them, and say so."""
        rows = np.frombuffer(self.index[train_col], dtype=np.int64)
        finite = rows[np.isfinite(x[rows])]
        back = finite[1:][np.diff(x[finite]) < 0]
        if not len(back):
            return []
        self.start = int(back[-1])
        return [f"{self.source}: the {name} column goes back {len(back)} time{'s' if len(back) > 1 else ''}, so "
                f"the file holds {len(back) + 1} runs appended one after another (a restart or several phases); "
                f"read the last, from row {self.start + 1}; split the file to diagnose the others"]

    def _train_column(self) -> str | None:
        """The training loss: the whole objective where the log has one, before any component of it."""
        for kind in ("train_loss", "train_loss_epoch"):
            found = self.order.get(kind, [])
            whole = [c for c in found if whole_loss(c)]
            if whole or found:
                return (whole or found)[0]
        return None

    def _first(self, kind: str) -> str | None:
        return next(iter(self.order.get(kind, [])), None)

    def _dense(self, col: str | None) -> np.ndarray:
        """The column's value in every row (NaN where a row has none); the row number when there is no column."""
        if col is None:
            return np.arange(self.rows, dtype=float)
        out = np.full(self.rows, np.nan)
        out[np.frombuffer(self.index[col], dtype=np.int64)] = np.frombuffer(self.values[col], dtype=float)
        return out

    def _series(self, col: str | None, x: np.ndarray) -> Series | None:
        if col is None or not len(self.values[col]):
            return None
        rows = np.frombuffer(self.index[col], dtype=np.int64)
        keep = rows >= self.start
        rows, values = rows[keep], np.frombuffer(self.values[col], dtype=float)[keep]
        if not len(rows):
            return None
        at = x[rows]
        at = np.where(np.isfinite(at), at, rows.astype(float))
        order = np.argsort(at, kind="stable")
        return Series(at[order], values[order].copy())

    def _epochs_at(self, val_col: str | None, x: np.ndarray) -> np.ndarray | None:
        """Epochs completed at each validation point, whichever way the log counts them: Lightning and Keras
        count from 0 (epoch 0 is the first), Hugging Face logs the epochs done (1.0, or 0.5 mid-epoch)."""
        epoch_col = self._first("epoch")
        if val_col is None or epoch_col is None:
            return None
        rows = np.frombuffer(self.index[val_col], dtype=np.int64)
        rows = rows[rows >= self.start]
        epochs = self._dense(epoch_col)[rows]
        if not len(epochs) or not np.isfinite(epochs).all():
            return None
        at = np.where(np.isfinite(x[rows]), x[rows], rows.astype(float))
        epochs = epochs[np.argsort(at, kind="stable")]
        done: np.ndarray = np.ceil(epochs) if np.any(epochs != np.round(epochs)) else epochs + (epochs.min() == 0)
        return done


MOVES_WITH = 0.7  # a metric whose rank order follows the validation loss's this closely moves with it


def metric_direction(name: str | None, metric: Series | None, loss: Series | None) -> tuple[bool, str]:
    """Whether the logged metric is better higher, and how that is known: by an unambiguous name (``"name"``),
    by moving with the validation loss (lower is better) or against it (higher is better) over the run
    (``"loss"``), or not at all (``"unknown"``: never guessed from a generic name such as ``val_metric``)."""
    if name is None or metric is None:
        return True, ""
    named = named_direction(name)
    if named is not None:
        return named, "name"
    moves = _rank_correlation(metric, loss)
    if moves is not None and abs(moves) >= MOVES_WITH:
        return moves < 0, "loss"
    return True, "unknown"


def _rank_correlation(metric: Series, loss: Series | None) -> float | None:
    """Spearman's correlation of the metric with the validation loss at the evaluations both logged (None with
    fewer than four such evaluations, or a constant one)."""
    if loss is None:
        return None
    _, mi, li = np.intersect1d(metric.steps, loss.steps, return_indices=True)
    m, v = metric.values[mi], loss.values[li]
    keep = np.isfinite(m) & np.isfinite(v)
    if keep.sum() < 4 or np.ptp(m[keep]) == 0 or np.ptp(v[keep]) == 0:
        return None
    rank_m, rank_v = (np.argsort(np.argsort(a[keep])).astype(float) for a in (m, v))
    return float(np.corrcoef(rank_m, rank_v)[0, 1])


def from_records(records: Iterable[Mapping[str, Any]], source: str, warnings: Iterable[str] = ()) -> History:
    """Build a history from logged rows (dicts of column → value, any order, sparse rows allowed)."""
    columns = Columns(source)
    for row in records:
        columns.add(row)
    return columns.history(warnings)
