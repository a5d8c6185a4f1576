"""How far from the grid optimum does each LR suggestion land, on task families it was not fitted on?

For every task (benchmarks/lr_corpus.py: 8 families) a log grid of constant LRs, 6 per decade, trained for a
fixed number of steps (2 seeds each) gives the best achievable metric. Range tests (3 seeds) give each rule's
pick, which is then trained the same way. Regret = (best - metric) / (best - untrained), clipped to [0, 1];
a run that diverged has regret 1. LR-free optimizers (LDoG, Prodigy) train the same steps with no LR at all.

gradpilot's default rule has three margins (gradpilot.lr.suggest.Margins). They are scored leave-one-family-out:
for each family, the margins are fitted on the other families (mean regret read off their grids) and the
family's own picks are then trained for real. Tasks marked held out were written after the rule was fixed.

    python benchmarks/lr_suggestion.py              # all tasks, resumes from benchmarks/results/
    python benchmarks/lr_suggestion.py --tasks digits-cnn-sgdm --fresh

Results are cached in benchmarks/results/lr_suggestion.json, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lr_corpus import TASKS
from lr_scoring import Cache, Scorer, curve_of, range_test, torch_lr_finder_pick
from lr_tasks import BenchTask

from gradpilot.lr import suggest

CACHE = Path(__file__).parent / "results" / "lr_suggestion.json"
RANGE_SEEDS = (0, 1, 2)
DEFAULT = "safe-edge (LOFO)"
FIXED_RULES = ("descent-edge", "valley", "steepest", "minimum/10")
LABELS = {"valley": "fastai valley", "steepest": "steepest (Lightning)", "minimum/10": "minimum/10"}
PACKAGES = ("pytorch-lr-finder",)
LR_FREE = ("ldog", "prodigy")
MARGIN_GRID = tuple(suggest.Margins(b, lag, spread) for b, lag, spread in
                    itertools.product((0.0, 0.25, 0.5, 0.75), (0.0, 0.5, 1.0), (0.0, 0.5, 1.0)))
console = Console(width=170)


@dataclass
class Bench:
    bt: BenchTask
    scorer: Scorer
    curves: list[suggest.Curve]
    package_picks: dict[str, list[float]]


def load(bt: BenchTask, cache: Cache) -> Bench:
    scorer = Scorer(bt, cache)
    curves = [curve_of(bt, cache.get(f"{bt.name}|range|{s}", lambda s=s: range_test(bt, s))) for s in RANGE_SEEDS]
    tlf = [cache.get(f"{bt.name}|tlf|{s}", lambda s=s: torch_lr_finder_pick(bt, s)) for s in RANGE_SEEDS]
    return Bench(bt, scorer, curves, {"pytorch-lr-finder": tlf})


def fit_margins(benches: list[Bench]) -> suggest.Margins:
    """The margins with the lowest mean regret on ``benches``, read off their grids (no training)."""
    def cost(m: suggest.Margins) -> float:
        return float(np.mean([b.scorer.interpolated(suggest.read(c, m).suggestion) for b in benches
                              for c in b.curves]))
    return min(MARGIN_GRID, key=cost)


def real(b: Bench, lrs: list[float]) -> float:
    return float(np.mean([b.scorer.regret(lr) for lr in lrs]))


def score_task(b: Bench, margins: suggest.Margins) -> dict[str, float]:
    out = {DEFAULT: real(b, [suggest.read(c, margins).suggestion for c in b.curves])}
    out |= {r: real(b, [suggest.RULES[r](c) for c in b.curves]) for r in FIXED_RULES}
    out |= {p: real(b, lrs) for p, lrs in b.package_picks.items()}
    out |= {k: b.scorer.lr_free(k) for k in LR_FREE}
    return out


def covered(b: Bench) -> bool:
    """Does the interval contain the grid's best LR on most range-test seeds?"""
    hits = [lo <= b.scorer.best_lr <= hi for lo, hi in (suggest.read(c).interval for c in b.curves)]
    return sum(hits) * 2 > len(hits)


def confidence_split(benches: list[Bench]) -> tuple[list[float], list[float]]:
    sure, unsure = [], []
    for b in benches:
        for c in b.curves:
            r = suggest.read(c)
            (sure if r.confidence >= 0.5 else unsure).append(b.scorer.regret(r.suggestion))
    return sure, unsure


def run(benches: list[Bench]) -> None:
    columns = [DEFAULT, *FIXED_RULES, *PACKAGES, *LR_FREE]
    table = Table(title="LR suggestion regret (0 = as good as the grid's best, 1 = no better than untrained)")
    for name in ("task", "family", "grid best", "margins", *[LABELS.get(c, c) for c in columns], "interval"):
        table.add_column(name, justify="left" if name in ("task", "family") else "right")
    calib = [b for b in benches if not b.bt.held_out]
    scores: dict[str, dict[str, float]] = {}
    for family in [*sorted({b.bt.family for b in calib}), "held out"]:
        group = [b for b in benches if (b.bt.held_out if family == "held out" else
                                        not b.bt.held_out and b.bt.family == family)]
        if not group:
            continue
        margins = suggest.MARGINS if family == "held out" else \
            fit_margins([b for b in calib if b.bt.family != family])
        for b in group:
            t0 = time.time()
            scores[b.bt.name] = score_task(b, margins)
            table.add_row(b.bt.name, b.bt.family, f"{b.scorer.best_lr:.1e}",
                          f"{margins.base:g}/{margins.per_lag:g}/{margins.per_spread:g}",
                          *[f"{scores[b.bt.name][c]:.2f}" for c in columns], "yes" if covered(b) else "no")
            console.log(f"{b.bt.name}: {time.time() - t0:.0f}s")
        table.add_section()
    _summaries(table, benches, scores, columns)
    console.print(table)
    _footer(benches, calib)


def _summaries(table: Table, benches: list[Bench], scores: dict[str, dict[str, float]], columns: list[str]) -> None:
    for title, held in (("leave-one-family-out", False), ("held out", True)):
        names = [b.bt.name for b in benches if b.bt.held_out == held]
        if not names:
            continue
        for label, fn in (("mean", statistics.mean), ("median", statistics.median), ("worst", max),
                          ("tasks > 0.5", lambda v: sum(x > 0.5 for x in v))):
            cells = [fn([scores[n][c] for n in names]) for c in columns]
            best = min(cells)
            table.add_row(f"{title}: {label}", "", "", "",
                          *[f"[bold]{v:.3f}[/]" if v == best else f"{v:.3f}" for v in cells],
                          f"{sum(covered(b) for b in benches if b.bt.held_out == held)}/{len(names)}"
                          if label == "mean" else "")
        table.add_section()


def _footer(benches: list[Bench], calib: list[Bench]) -> None:
    fitted = fit_margins(calib)
    note = "" if fitted == suggest.MARGINS else f" (gradpilot ships {suggest.MARGINS})"
    console.print(f"margins fitted on all {len(calib)} calibration tasks: {fitted}{note}")
    sure, unsure = confidence_split(benches)
    console.print(f"confidence ≥ 0.5: {len(sure)} range tests, mean regret {np.mean(sure):.3f}; "
                  f"< 0.5: {len(unsure)}, mean regret {np.mean(unsure) if unsure else math.nan:.3f}")
    families = sorted({b.bt.family for b in benches})
    console.print(f"{len(benches)} tasks in {len(families)} families: {', '.join(families)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", help="task names (default: all)")
    parser.add_argument("--fresh", action="store_true", help="ignore cached results")
    parser.add_argument("--cache", type=Path, default=CACHE)
    args = parser.parse_args()
    chosen = [t for t in TASKS if not args.tasks or t.name in args.tasks]
    torch.set_num_threads(2)
    cache = Cache(args.cache, args.fresh)
    run([load(bt, cache) for bt in chosen])


if __name__ == "__main__":
    main()
