"""Does `gradpilot diagnose` judge runs it was not calibrated on? Leave-one-family-out, on real libraries' logs.

The corpus (benchmarks/diagnose_corpus.py) holds runs written by Hugging Face's Trainer, Lightning, Keras 3 and
a plain CSV, over 14 task families. Each run is read from its folder exactly as `gradpilot diagnose` reads it,
and labelled from facts the training loop recorded (never from the log):

- nan: a loss or weight was non-finite at the end. divergence: the training loss ended above where it began.
- LR direction (full data only): the task's grid (benchmarks/lr_suggestion.py: constant LR, same steps) gives the
  best LR and metric. A run that loses ≥10% of the achievable improvement — regret = (best − metric) /
  (best − untrained) — should "lower" its LR if it is ≥3× the best, "raise" it if ≤⅓ of it; every other run
  should "keep" it — except a run that broke (NaN, or a loss that ended above its start) at the grid's best LR or
  above: that LR was too high for that run (a Keras GRU is not the torch GRU the grid trained), so "lower".
  Verdicts map: too high → lower, too low → raise, about right / unknown → keep.
- overfitting: the validation loss the loop saw ended ≥10% above its minimum, reached before the last 20%, while
  the training loss fell since that minimum (the median of the last epoch's losses below the minimum's epoch's).
  A rise with the training loss rising too is a run getting worse, not one fitting its training set too well;
  the hand labels of real logs (../shared/wildlogs) call it so. Every rise of ≥10% is also counted ("any rise")
  and reported beside.
- The remedy is tested: each full-data constant-LR run judged too high or too low is trained again at the LR
  the remedy names (same task and steps), and the share of the lost performance it wins back is reported.

Every figure is leave-one-family-out: the diagnosis's calibrated constants (gradpilot.diagnosis.detectors.Thresholds) are
chosen on the other families, then the left-out family is scored. The detection constants are chosen over their
whole grid by direction accuracy plus the two kinds' F1 (each run diagnosed once per candidate set, in worker
processes); the remedy's LR factors by the lost performance their re-runs win back on the other families.

    python benchmarks/diagnose.py              # generates the corpus first if needed (cached)
    python benchmarks/diagnose.py --mistakes   # and lists what it got wrong
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import importlib

from diagnose_corpus import GRID_CACHE, bench_tasks, load_corpus
from lr_scoring import Cache, Scorer

from gradpilot.diagnosis._run_shape import CALIBRATED, CALIBRATION_GRID, REMEDIES, REMEDY_GRID, THRESHOLDS, Thresholds

dg = importlib.import_module("gradpilot.diagnosis.detectors")
from gradpilot.diagnosis.history import History
from gradpilot.diagnosis.logs import read_log

DIRECTION = {"too high": "lower", "too low": "raise", "about right": "keep", "unknown": "keep"}
console = Console(width=160)


@dataclass(frozen=True)
class Case:
    run: dict[str, Any]
    history: History
    direction: str | None
    broke: bool  # nan or divergence
    overfit: bool
    rise: bool = False  # any final rise of the validation loss (the former label): reported beside

    @property
    def regret(self) -> float:
        m, best, untrained = self.run["final_metric"], self.run["best"], self.run["untrained"]
        return 1.0 if m is None else float(np.clip((best - m) / (best - untrained), 0, 1))


def _median_edges(losses: list[float | None]) -> tuple[float, float]:
    y = np.array([np.nan if v is None else v for v in losses], float)
    k = max(3, len(y) // 20)
    return float(np.nanmedian(y[:k])), float(np.nanmedian(y[-k:])) if np.isfinite(y[-k:]).any() else np.inf


def label(run: dict[str, Any], history: History) -> Case:
    start, end = _median_edges(run["losses"])
    broke = bool(run["nan"]) or end > start * 1.02
    m, best, untrained = run["final_metric"], run["best"], run["untrained"]
    regret = 1.0 if m is None else (best - m) / (best - untrained)
    direction = None
    if not run["small"]:
        ratio = run["multiplier"]
        direction = "keep"
        if (regret >= 0.1 and ratio >= 3) or (broke and ratio >= 1):
            direction = "lower"
        elif regret >= 0.1 and ratio <= 1 / 3:
            direction = "raise"
    v = np.array([np.nan if x is None else x for x in run["val_losses"]], float)
    rise = overfit = False
    if len(v) >= 3 and np.isfinite(v).all() and not broke:
        b = int(np.argmin(v))
        rise = bool(v[-1] >= 1.1 * v[b] and b < 0.8 * len(v))
        overfit = rise and _training_fell(run["losses"], len(v), b)
    return Case(run, history, direction, broke, overfit, rise)


def _training_fell(losses: list[float | None], epochs: int, at: int) -> bool:
    """The training loss's median over the last epoch is below its median over epoch ``at`` (0-based)."""
    y = np.array([np.nan if x is None else x for x in losses], float)
    per = max(1, len(y) // epochs)
    then, last = y[at * per: (at + 1) * per], y[-per:]
    return bool(np.isfinite(then).any() and np.isfinite(last).any() and np.nanmedian(last) < np.nanmedian(then))


def cases(train: bool = True) -> list[Case]:
    out = []
    for run in load_corpus(progress=False, train=train):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(label(run, read_log(run["folder"])))
    return out


@dataclass
class Tally:
    right: int = 0
    judged: int = 0
    calls: int = 0  # verdicts "too high" / "too low" on runs whose direction is known
    right_calls: int = 0
    off: int = 0  # runs whose LR is truly off (lower or raise)
    tp: Counter[str] | None = None
    fp: Counter[str] | None = None
    fn: Counter[str] | None = None

    def __post_init__(self) -> None:
        self.tp, self.fp, self.fn = Counter(), Counter(), Counter()

    def add(self, case: Case, d: dg.Diagnosis | Seen) -> None:
        assert self.tp is not None and self.fp is not None and self.fn is not None
        if case.direction is not None:
            self.judged += 1
            said = DIRECTION[d.lr_verdict]
            self.right += said == case.direction
            self.off += case.direction != "keep"
            if said != "keep":
                self.calls += 1
                self.right_calls += said == case.direction
        for kind, truth, found in (("nan/divergence", case.broke, bool(d.kinds & {"nan", "divergence"})),
                                   ("overfitting", case.overfit, "overfitting" in d.kinds),
                                   ("any rise", case.rise, "overfitting" in d.kinds)):
            self.tp[kind] += truth and found
            self.fp[kind] += found and not truth
            self.fn[kind] += truth and not found

    def precision(self, kind: str) -> float:
        assert self.tp is not None and self.fp is not None
        found = self.tp[kind] + self.fp[kind]
        return self.tp[kind] / found if found else float("nan")

    def recall(self, kind: str) -> float:
        assert self.tp is not None and self.fn is not None
        labelled = self.tp[kind] + self.fn[kind]
        return self.tp[kind] / labelled if labelled else float("nan")

    def call_precision(self) -> str:
        """How often a "too high" / "too low" is right, and the share of truly-off runs that get a right call."""
        if not self.calls:
            return "– (0) / 0.00"
        return f"{self.right_calls / self.calls:.2f} ({self.calls}) / {self.right_calls / max(1, self.off):.2f}"

    @property
    def accuracy(self) -> float:
        return self.right / self.judged if self.judged else float("nan")

    def score(self) -> float:
        """What the calibration maximises: direction accuracy plus the two kinds' F1."""
        f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in
              ((self.precision(k), self.recall(k)) for k in ("nan/divergence", "overfitting"))]
        return self.accuracy + float(np.nansum(f1)) / 2


_DIAGNOSED: dict[tuple[int, Thresholds], dg.Diagnosis] = {}


def diagnosed(case: Case, thresholds: Thresholds) -> dg.Diagnosis:
    """Each case is diagnosed once per set of thresholds (the folds share them)."""
    key = (id(case), thresholds)
    if key not in _DIAGNOSED:
        _DIAGNOSED[key] = dg.diagnose(case.history, thresholds)
    return _DIAGNOSED[key]


@dataclass(frozen=True)
class Seen:
    """What a tally needs of a diagnosis (small enough to send back from a worker process)."""

    lr_verdict: str
    kinds: frozenset[str]


_CASES: list[Case] = []  # every case, shared with the worker processes (forked)
_INDEX: dict[int, int] = {}
_SEEN: dict[Thresholds, list[Seen]] = {}


def _judge(thresholds: Thresholds) -> list[Seen]:
    out = []
    for c in _CASES:
        d = dg.diagnose(c.history, thresholds)
        out.append(Seen(d.lr_verdict, frozenset(d.kinds)))
    return out


def judge_all(all_cases: list[Case]) -> None:
    """Diagnose every case under every candidate set of thresholds, once, on every core."""
    _CASES[:] = all_cases
    _INDEX.update({id(c): i for i, c in enumerate(all_cases)})
    todo = [th for th in candidates() if th not in _SEEN]
    with multiprocessing.get_context("fork").Pool() as pool, Progress(console=console, transient=True) as bar:
        job = bar.add_task(f"diagnosing {len(all_cases)} runs under {len(todo)} sets of thresholds", total=len(todo))
        for th, seen in zip(todo, pool.imap(_judge, todo), strict=True):
            _SEEN[th] = seen
            bar.advance(job)


def tally(group: list[Case], thresholds: Thresholds) -> Tally:
    t = Tally()
    seen = _SEEN.get(thresholds)
    for c in group:
        t.add(c, seen[_INDEX[id(c)]] if seen is not None else diagnosed(c, thresholds))
    return t


def candidates() -> list[Thresholds]:
    return [THRESHOLDS.replace(**dict(zip(CALIBRATED, values, strict=True)))
            for values in itertools.product(*(CALIBRATION_GRID[k] for k in CALIBRATED))]


def fit(group: list[Case]) -> Thresholds:
    """The detection constants that score best on ``group``, over the whole CALIBRATION_GRID. A constant leaves
    its shipped value only to win by more than one run's worth of score: among the sets within that margin of
    the best, the one that changes the fewest constants (then the best scoring) is chosen."""
    scored = [(tally(group, th).score(), th) for th in candidates()]
    top = max(score for score, _ in scored)
    margin = 1 / max(1, sum(c.direction is not None for c in group))
    near = [(score, th) for score, th in scored if score >= top - margin]
    return min(near, key=lambda pair: (_changes(pair[1]), -pair[0]))[1]


def _changes(th: Thresholds) -> int:
    return sum(getattr(th, name) != getattr(THRESHOLDS, name) for name in CALIBRATED)


def fit_remedies(group: list[Case], thresholds: Thresholds, scorers: dict[str, Scorer]) -> Thresholds:
    """Each remedy's LR factor: the one that wins back the most lost performance on ``group`` (each factor is
    scored on the runs whose LR remedy it sets; the others are held at the shipped values)."""
    chosen = thresholds
    for name in REMEDIES:
        runs = [c for c in group if _remedy_set_by(c, thresholds) == name]

        def recovered(value: float, name: str = name, runs: list[Case] = runs) -> float:
            rec = remedy_recovery(runs, thresholds.replace(**{name: value}), scorers)
            return float(np.mean(rec)) if rec else 0.0
        chosen = chosen.replace(**{name: max(REMEDY_GRID, key=recovered)})
    return chosen


def _remedy_set_by(case: Case, thresholds: Thresholds) -> str | None:
    """Which of REMEDIES sets the LR of a constant-LR, full-data run judged too high (None otherwise)."""
    if case.run["schedule"] != "constant" or case.run["small"]:
        return None
    d = diagnosed(case, thresholds)
    finding = next((f for f in d.findings if "learning_rate" in f.remedy), None)
    return SETS.get(finding.kind) if d.lr_verdict == "too high" and finding is not None else None


SETS = {"nan": "cut_broken", "plateau": "cut_broken", "divergence": "cut_diverged", "oscillation": "cut_oscillating"}


def remedy_recovery(group: list[Case], thresholds: Thresholds, scorers: dict[str, Scorer]) -> list[float]:
    """For constant-LR, full-data runs judged too high/low: the share of the lost performance won back by
    training again at the remedy's LR."""
    out = []
    for c in group:
        run = c.run
        if run["schedule"] != "constant" or run["small"]:
            continue
        d = diagnosed(c, thresholds)
        new = next((f.remedy["learning_rate"] for f in d.findings if "learning_rate" in f.remedy), None)
        if d.lr_verdict not in ("too high", "too low") or new is None:
            continue
        before = run["final_metric"] if run["final_metric"] is not None else run["untrained"]
        lost = run["best"] - before
        if lost <= 0.05 * (run["best"] - run["untrained"]):
            continue  # nothing much to win back
        after = scorers[run["task"]].metric(float(f"{new:.3g}"))
        after = run["untrained"] if np.isnan(after) else after
        out.append(float(np.clip((after - before) / lost, -1, 1)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mistakes", action="store_true", help="list the runs judged wrongly")
    parser.add_argument("--have", action="store_true", help="only the runs already generated (train nothing)")
    args = parser.parse_args()
    all_cases = cases(train=not args.have)
    judge_all(all_cases)
    families = sorted({c.run["family"] for c in all_cases})
    cache = Cache(GRID_CACHE, False)
    present = {c.run["task"] for c in all_cases}
    scorers = {bt.name: Scorer(bt, cache) for bt in bench_tasks() if bt.name in present}
    table = Table(title=f"diagnose, leave-one-family-out: {len(all_cases)} runs, {len(families)} families")
    for col in ("left out", "runs", "LR direction", "LR call P (n) / coverage", "NaN/div P", "NaN/div R",
                "overfit P", "overfit R", "remedy recovers"):
        table.add_column(col, justify="right" if col != "left out" else "left")
    pooled, recovered, chosen = Tally(), [], {name: Counter[float]() for name in (*CALIBRATED, *REMEDIES)}
    for fam in families:
        test = [c for c in all_cases if c.run["family"] == fam]
        rest = [c for c in all_cases if c.run["family"] != fam]
        detect = fit(rest)
        th = fit_remedies(rest, detect, scorers)
        for name, counts in chosen.items():
            counts[getattr(th, name)] += 1
        t = tally(test, detect)
        for c in test:
            pooled.add(c, _SEEN[detect][_INDEX[id(c)]])
        rec = remedy_recovery(test, th, scorers)
        recovered += rec
        table.add_row(fam, str(len(test)), f"{t.accuracy:.2f} ({t.judged})", t.call_precision(), *_kinds(t),
                      f"{np.mean(rec):.0%} ({len(rec)})" if rec else "–")
    table.add_section()
    table.add_row("[bold]all, pooled[/]", str(len(all_cases)), f"[bold]{pooled.accuracy:.2f}[/] ({pooled.judged})",
                  pooled.call_precision(), *_kinds(pooled), f"[bold]{np.mean(recovered):.0%}[/] ({len(recovered)})" if recovered else "–")
    console.print(table)
    console.print(f"overfitting against any final rise of the validation loss (the former label): precision "
                  f"{pooled.precision('any rise'):.2f}, recall {pooled.recall('any rise'):.2f} "
                  f"({pooled.tp['any rise'] + pooled.fn['any rise']} runs)")  # type: ignore[index]
    fitted = fit_remedies(all_cases, fit(all_cases), scorers)
    note = "" if fitted == THRESHOLDS else f" (gradpilot ships {THRESHOLDS})"
    console.print(f"thresholds fitted on all families: {fitted}{note}")
    writers = Counter(c.run["writer"] for c in all_cases)
    console.print(f"written by {dict(writers)}")
    console.print("chosen by the folds: " + "; ".join(
        f"{name} " + ", ".join(f"{v:.3g}×{n}" for v, n in sorted(counts.items())) for name, counts in chosen.items()))
    if args.mistakes:
        _mistakes(all_cases)


def _kinds(t: Tally) -> list[str]:
    return [f"{v:.2f}" for k in ("nan/divergence", "overfitting") for v in (t.precision(k), t.recall(k))]


def _mistakes(all_cases: list[Case]) -> None:
    for c in all_cases:
        d = dg.diagnose(c.history)
        got = DIRECTION[d.lr_verdict]
        wrong = (c.direction is not None and got != c.direction) or c.broke != bool(d.kinds & {"nan", "divergence"}) \
            or c.overfit != ("overfitting" in d.kinds)
        if wrong:
            r = c.run
            console.print(f"{r['task']} ×{r['multiplier']:.3g} {r['schedule']} {'small ' if r['small'] else ''}"
                          f"{r['writer']}: want {c.direction} broke={c.broke} overfit={c.overfit} "
                          f"(regret {c.regret:.2f}); got {d.lr_verdict} {sorted(d.kinds)} — {d.lr_reason[:100]}")


if __name__ == "__main__":
    main()
