"""The metrics log ``fit`` writes beside its checkpoints, in the layout of Lightning's ``CSVLogger``.

Sparse rows: one per optimizer step (``step``, ``epoch``, ``lr``, ``train_loss``) and one per validation
(``step``, ``epoch``, ``val_loss`` and the metric). Epochs count from 0, as Lightning counts them.
``gradpilot diagnose DIR/metrics.csv`` reads it.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path

from gradpilot._direction import named_direction

NAME = "metrics.csv"


def metric_column(name: str | None, higher_is_better: bool) -> str:
    """``val_<metric name>``; a metric whose name does not say its direction gets a word that does (``_error``
    for lower-is-better, ``_higher`` for higher-is-better), so that a reader of the log knows it without
    guessing."""
    words = re.sub(r"[^a-z0-9]+", "_", (name or "metric").lower()).strip("_") or "metric"
    if named_direction(words) != higher_is_better:
        words += "_higher" if higher_is_better else "_error"
    return f"val_{words}"


class MetricsLog:
    """Append-only CSV, rewritten whole once when a run resumes (so a kill never leaves rows the checkpoint
    does not know of)."""

    def __init__(self, directory: Path, metric: str | None) -> None:
        self.path = directory / NAME
        self.columns = ["step", "epoch", "lr", "train_loss", "val_loss"] + ([metric] if metric else [])
        self.steps_written = 0
        self.evals_written = 0

    def write(self, losses: Sequence[float | None], lrs: Sequence[float], epoch_steps: Sequence[int],
              val_losses: Sequence[float], val_metrics: Sequence[float], *, rewrite: bool = False) -> None:
        """Add the rows not yet written (every row from the start when ``rewrite``)."""
        if rewrite or not self.path.exists():
            self.steps_written = self.evals_written = 0
        metrics: Sequence[float | None] = val_metrics or [None] * len(val_losses)
        evals = list(zip(epoch_steps, val_losses, metrics, strict=False))  # no validation: no rows
        rows = []
        for step in range(self.steps_written + 1, len(losses) + 1):
            epoch = sum(1 for s in epoch_steps if s < step)
            blank = [""] * (len(self.columns) - 4)
            rows.append([step, epoch, _cell(lrs[step - 1]), _cell(losses[step - 1]), *blank])
            rows += self._eval_rows(evals, up_to=step, exactly=True)
        rows += self._eval_rows(evals, up_to=len(losses))
        self.steps_written = len(losses)
        fresh = rewrite or not self.path.exists()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.path, "w" if fresh else "a", newline="") as f:
            writer = csv.writer(f)
            if fresh:
                writer.writerow(self.columns)
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())

    def _eval_rows(self, evals: list[tuple[int, float, float | None]], *, up_to: int,
                   exactly: bool = False) -> list[list[object]]:
        """The evaluations not yet written that came at step ``up_to`` (``exactly``) or by it."""
        rows = []
        while self.evals_written < len(evals) and (evals[self.evals_written][0] == up_to if exactly
                                                   else evals[self.evals_written][0] <= up_to):
            rows.append(self._eval_row(evals[self.evals_written], self.evals_written))
            self.evals_written += 1
        return rows

    def _eval_row(self, entry: tuple[int, float, float | None], epoch: int) -> list[object]:
        step, loss, metric = entry
        row: list[object] = [step, epoch, "", "", _cell(loss)]
        return row + ([_cell(metric)] if len(self.columns) > 5 else [])


def _cell(value: float | None) -> str:
    return "" if value is None else repr(float(value))  # 'nan' and 'inf' as the readers expect them
