"""Labelled benchmark for gradpilot.diagnose: precision and recall per kind, and LR-direction accuracy.

Real runs (benchmarks/diagnose_runs.py) are labelled by what is objectively true of each:
- nan: the loss became non-finite; divergence: it ended above where it started.
- LR direction: the grid's best LR for the task (full data, constant LR, mean final metric over seeds) is the
  reference. A run whose LR is ≥3× above it and that loses ≥10% of the achievable improvement should
  "lower"; ≥3× below and losing ≥10%, "raise"; otherwise "keep".
- oscillation: LR too high (as above) but no NaN or divergence.
- plateau: the train loss never fell 3% below its start (and no NaN/divergence).
- overfitting: validation loss ended ≥10% above its minimum, reached before the last 20% of training.
- underfitting: the final metric is ≥10% of the achievable improvement short of the same setting run twice
  as long would give... approximated by: validation still improving over the last evaluations by ≥10%
  of its total gain.
- slow_convergence: the same run with cosine decay ends ≥5% of the achievable improvement better.
- healthy: none of the above.
Synthetic edge cases (pure noise, spikes, NaN, flat, overfitting shapes) are added with their own labels.

    python benchmarks/diagnose.py            # generates the runs first if needed (a few minutes, cached)
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diagnose_runs import load_runs, nan_list

from gradpilot.diagnose import KINDS, diagnose
from gradpilot.history import History, Series

DIRECTION = {"too high": "lower", "too low": "raise", "about right": "keep", "unknown": "keep"}


def history_of(run: dict[str, Any]) -> History:
    losses = nan_list(run["train_losses"])
    steps = np.arange(1, len(losses) + 1, dtype=float)
    at = np.array(run["epoch_steps"][: len(run["val_losses"])], float)
    return History(Series(steps, losses), Series(at, nan_list(run["val_losses"])), Series(at, nan_list(run["val_metrics"])),
                   "val_metric", True, Series(steps, np.array(run["lrs"], float)), tuple(run["epoch_steps"]), "bench")


def label(runs: list[dict[str, Any]]) -> list[tuple[str, History, set[str], str | None, set[str]]]:
    by_key = {(r["task"], r["seed"], r["small"], r["schedule"], round(r["multiplier"], 6)): r for r in runs}
    best: dict[str, tuple[float, float, float]] = {}
    for task in {r["task"] for r in runs}:
        full = [r for r in runs if r["task"] == task and not r["small"] and r["schedule"] is None]
        scores: dict[float, list[float]] = defaultdict(list)
        for r in full:
            final = r["val_metrics"][-1] if r["val_metrics"] and r["val_metrics"][-1] is not None else -np.inf
            scores[r["multiplier"]].append(final)
        means = {m: float(np.mean(v)) for m, v in scores.items()}
        m_best = max(means, key=means.get)
        untrained = float(np.mean([r["untrained_metric"] for r in full]))
        best[task] = (m_best, means[m_best], untrained)
    out = []
    for r in runs:
        h = history_of(r)
        m_best, top, untrained = best[r["task"]]
        final = r["val_metrics"][-1] if r["val_metrics"] and r["val_metrics"][-1] is not None else None
        regret = 1.0 if final is None else (top - final) / max(top - untrained, 1e-12)
        kinds: set[str] = set()
        y = h.train_loss.values
        if not np.isfinite(y).all():
            kinds.add("nan")
        else:
            edge = max(3, len(y) // 20)
            start, end = np.median(y[:edge]), np.median(y[-edge:])
            if end > start * 1.02:
                kinds.add("divergence")
            elif start - np.min(np.convolve(y, np.ones(edge) / edge, "valid")) < 0.03 * abs(start):
                kinds.add("plateau")
        ratio = r["multiplier"] / m_best
        direction: str | None = None  # defined only against the grid: full data, constant LR
        if not r["small"] and r["schedule"] is None:
            direction = "keep"
            if ratio >= 3 and regret >= 0.1:
                direction = "lower"
            elif ratio <= 1 / 3 and regret >= 0.1:
                direction = "raise"
        if direction == "lower" and not kinds:
            kinds.add("oscillation")
        v = h.val_loss.values if h.val_loss is not None else np.array([])
        if len(v) >= 3 and np.isfinite(v).all():
            b = int(np.argmin(v))
            if v[-1] >= 1.1 * v[b] and b < 0.8 * len(v) and not kinds & {"nan", "divergence"}:
                kinds.add("overfitting")
            gain = v[0] - v.min()
            if b == len(v) - 1 and gain > 0 and (v[-2] - v[-1]) >= 0.1 * gain:
                kinds.add("underfitting")
        twin = by_key.get((r["task"], r["seed"], r["small"], "cosine", round(r["multiplier"], 6)))
        has_twin = r["schedule"] is None and twin and twin["val_metrics"][-1] is not None and final is not None
        if has_twin and (twin["val_metrics"][-1] - final) / max(top - untrained, 1e-12) >= 0.05 \
                and not kinds & {"nan", "divergence"}:
            kinds.add("slow_convergence")
        name = f"{r['task']} lr×{r['multiplier']:.3g} {'small×5ep' if r['small'] else ''}{r['schedule'] or ''} s{r['seed']}"
        unknown = set() if (twin or r["schedule"] == "cosine") else {"slow_convergence"}  # no twin: cannot tell
        out.append((name, h, kinds or {"healthy"}, direction, unknown))
    return out


def synthetic() -> list[tuple[str, History, set[str], str, set[str]]]:
    rng = np.random.default_rng(0)
    steps = np.arange(1, 1001, dtype=float)
    lr = Series(steps, np.full(1000, 1e-3))
    decay = 0.3 + 2.0 * np.exp(-steps / 150)
    cases = []
    noisy = decay * (1 + 0.35 * rng.standard_normal(1000))  # heavy but ordinary minibatch noise
    cases.append(("synthetic noisy healthy", History(Series(steps, np.abs(noisy)), lr=lr), {"healthy"}, "keep", set()))
    spiky = decay.copy()
    spiky[rng.choice(1000, 25, replace=False)] *= rng.uniform(3, 8, 25)
    cases.append(("synthetic spikes", History(Series(steps, spiky * (1 + 0.05 * rng.standard_normal(1000))), lr=lr),
                  {"oscillation"}, "lower", set()))
    nan = decay.copy()
    nan[600:] = np.nan
    cases.append(("synthetic nan", History(Series(steps, nan), lr=lr), {"nan"}, "lower", set()))
    flat = 2.3 + 0.02 * rng.standard_normal(1000)
    cases.append(("synthetic flat", History(Series(steps, flat), lr=Series(steps, np.full(1000, 1e-6))), {"plateau"},
                  "raise", set()))
    blow = np.concatenate([decay[:500], decay[499] * np.exp(np.arange(500) / 80)])
    cases.append(("synthetic blow-up", History(Series(steps, blow), lr=lr), {"divergence"}, "lower", set()))
    ep = np.arange(1, 21, dtype=float) * 50
    val = 0.6 + 0.002 * (ep / 50 - 6) ** 2
    train = 0.6 * np.exp(-steps / 300) + 0.05
    cases.append(("synthetic overfit", History(Series(steps, train), val_loss=Series(ep, val), lr=lr), {"overfitting"},
                  "keep", set()))
    no_lr = History(Series(steps, np.abs(noisy)))
    cases.append(("synthetic healthy, no LR logged", no_lr, {"healthy"}, "keep", set()))
    return cases


def main() -> None:
    cases = label(load_runs()) + synthetic()
    tp: dict[str, int] = defaultdict(int)
    fp: dict[str, int] = defaultdict(int)
    fn: dict[str, int] = defaultdict(int)
    right = total = 0
    mistakes = []
    for name, h, truth, direction, unknown in cases:
        d = diagnose(h)
        found = d.kinds - unknown
        for k in set(KINDS) - unknown:
            tp[k] += k in found and k in truth
            fp[k] += k in found and k not in truth
            fn[k] += k not in found and k in truth
        got = DIRECTION[d.lr_verdict]
        if direction is not None:
            right += got == direction
            total += 1
        if found != truth or (direction is not None and got != direction):
            mistakes.append((name, sorted(truth), sorted(found), direction, got))
    console = Console(width=140)
    table = Table(title=f"diagnose on {len(cases)} labelled runs ({len(cases) - len(synthetic())} real, "
                        f"{len(synthetic())} synthetic)")
    for col in ("kind", "labelled", "found", "precision", "recall"):
        table.add_column(col, justify="right")
    for k in KINDS:
        labelled, found = tp[k] + fn[k], tp[k] + fp[k]
        if not labelled and not found:
            continue  # a kind this set has no case of (insufficient_data: every run here is long enough)
        prec = tp[k] / found if found else float("nan")
        rec = tp[k] / labelled if labelled else float("nan")
        table.add_row(k, str(labelled), str(found), f"{prec:.2f}", f"{rec:.2f}")
    table.add_section()
    table.add_row("LR direction", str(total), "", f"accuracy {right / total:.2f}", "(runs with a grid reference)")
    console.print(table)
    if "--mistakes" in sys.argv:
        for m in mistakes:
            console.print(m)


if __name__ == "__main__":
    main()
