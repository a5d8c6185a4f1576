"""How much can any rule read off one run's log? A learned model's leave-one-family-out LR direction.

A gradient-boosted classifier (scikit-learn) is given each run's whole log — its training-loss curve (24 points of
log-loss, relative to the start), its validation score (10 points, rescaled to 0–1), its LR (6 points, relative to
the peak), the noise and the early jump — and learns the direction label of benchmarks/diagnose.py on the other
families. Its score on the family left out bounds what hand rules on the same log can hope for; its score on the
runs it was trained on shows the labels are learnable, so the gap is what does not carry from one family to another.

    python benchmarks/diagnose_ceiling.py      # the corpus must exist (python benchmarks/diagnose_corpus.py)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diagnose import cases

from gradpilot.diagnosis._run_shape import curve
from gradpilot.diagnosis.history import History, Series


def _resampled(values: np.ndarray, points: int) -> np.ndarray:
    v = np.nan_to_num(values.astype(float))
    return np.interp(np.linspace(0, 1, points), np.linspace(0, 1, len(v)), v) if len(v) > 1 else np.zeros(points)


def _validation(series: Series | None, higher_is_better: bool) -> np.ndarray:
    if series is None or len(series) < 2:
        return np.zeros(10)
    a = series.values if higher_is_better else -series.values
    low, high = np.nanmin(a), np.nanmax(a)
    return _resampled((a - low) / max(high - low, 1e-9), 10)


def features(h: History) -> np.ndarray:
    c = curve(h.train_loss.values, h.train_loss.steps)
    if c is None:
        shape, extra = np.zeros(24), [1.0, 0.0, 0.0]
    else:
        x = (c.steps - c.steps[0]) / max(c.steps[-1] - c.steps[0], 1)
        log_loss = np.log(np.maximum(c.smooth, 1e-8)) - np.log(max(c.start, 1e-8))
        shape = np.interp(np.linspace(0, 1, 24), x, log_loss)
        extra = [0.0, float(np.log(c.noise / c.scale + 1e-9)), float(np.log(c.early_jump))]
    lr = np.ones(6) if h.lr is None or len(h.lr) < 2 else _resampled(h.lr.values / np.nanmax(h.lr.values), 6)
    return np.clip(np.concatenate([shape, _validation(h.val_metric, h.higher_is_better), lr, extra]), -30, 30)


def main() -> None:
    judged = [c for c in cases(train=False) if c.direction is not None]
    x = np.array([features(c.history) for c in judged])
    y = np.array([c.direction for c in judged])
    family = np.array([c.run["family"] for c in judged])
    table = Table(title=f"LR direction from one run's log: {len(judged)} runs, {len(set(family))} families")
    for col in ("model", "left-out family (LOFO)", "trained on (in-sample)"):
        table.add_column(col, justify="right" if col != "model" else "left")
    models = {"gradient boosting": lambda: GradientBoostingClassifier(random_state=0),
              "random forest": lambda: RandomForestClassifier(300, min_samples_leaf=3, random_state=0)}
    for name, make in models.items():
        left_out = np.empty(len(y), dtype=object)
        for fam in sorted(set(family)):
            left_out[family == fam] = make().fit(x[family != fam], y[family != fam]).predict(x[family == fam])
        inside = make().fit(x, y).predict(x)
        table.add_row(name, f"{np.mean(left_out == y):.2f}", f"{np.mean(inside == y):.2f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
