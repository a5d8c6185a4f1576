"""tune against what a user would do instead, per task and seed: the final validation metric and the wall time
it cost, as a multiple of one run of the task measured in the same process just before.

    grid      the best constant LR of a log grid (3 points a decade, >= 10 points), the mean over the seeds: the
              reference every regret is measured against (its cost: the grid's runs)
    cosine    a cosine schedule at 5 LRs a quarter and a half decade around the grid's best, the best of them
    tune@B    gradpilot.tune at budgets 1.5, 2 and 3 (runs of wall time); the metric of the model it trained
    prodigy   Prodigy at lr=1 with cosine annealing (its README's advice), one run
    sfree     AdamWScheduleFree at its default lr with 5% warmup, evaluated in eval mode, one run
    sf-algoperf  AdamWScheduleFree with the self-tuning AlgoPerf recipe the schedulefree package ships (lr 0.0025,
              beta2 0.9955, weight decay 0.081, 2% warmup, r 0.75, weight power 2), one run
    sfplus    ScheduleFree+ (benchmarks/schedulefree_plus.py: written from the paper's equations), one run
    optuna    a study a user would hand-wire: TPE over log-LR in the grid's range, HyperbandPruner on epochs,
              stopped after tune@2's wall time; the best trial's metric

Regret is the relative gap to the grid's best: (best - x) / |best| when higher is better (negative: x beats the
grid). Every method runs on seeds 0 and 1 (the task's seed and the method's); the table shows their mean.

    python benchmarks/tune.py [--tasks a,b | --late] [--skip-minilm] [--seeds 0,1] [--threads 1]
                              [--out benchmarks/results/tune.json]

--late runs the five tasks written after tune's rules (benchmarks/lr_tasks_late.py) instead. The seeds' spread is
in the last table (the largest gap between the two seeds' regrets, per method).

Results are cached per task in --out: a second call runs only the tasks not there yet.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lr_corpus
import lr_tasks
import tune_baselines as base

from gradpilot.tuning import tune

CHOSEN = ("spirals-mlp-adamw", "digits-cnn-sgdm", "friedman-mlp-sgd", "count-gru-rmsprop", "max-transformer-adamw",
          "charlm-lstm-adam", "moons-mlp-nesterov", "regression-mlp-nadam", "minilm-finetune-adamw")
BUDGETS = (1.5, 2.0, 3.0)
LR_FREE = ("prodigy", "sfree", "sf-algoperf", "sfplus")
METHODS = ("grid", "cosine", *(f"tune@{b:g}" for b in BUDGETS), *LR_FREE, "optuna")


def tuned(bt: lr_tasks.BenchTask, budget: float, seed: int) -> dict[str, Any]:
    task = base.as_written(bt, seed)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        r = tune(task, budget=budget, out_dir=out, seed=seed)
        wall = time.perf_counter() - start
        peak = json.loads((Path(out) / "tune.json").read_text())["peak_disk_bytes"]
    stages = {s.name: {"seconds": round(s.seconds, 3), "training": round(s.spent.training, 3),
                       "validation": round(s.spent.validation, 3), "io": round(s.spent.io, 3),
                       "other": round(s.spent.other, 3)} for s in r.stages}
    return {"metric": r.metric, "seconds": wall, "plan": r.plan, "spent": r.spent, "stages": stages,
            "clock_run_seconds": r.run_seconds, "peak_disk_bytes": peak}


def bench(bt: lr_tasks.BenchTask, seeds: list[int]) -> dict[str, Any]:
    began = time.time()
    higher = base.as_written(bt, 0).higher_is_better
    base.one_run(bt, seeds[0])  # a first run pays one-time imports and caches: not part of any method's cost
    runs = [base.one_run(bt, s) for s in seeds]  # one run of the task as written: the unit of cost
    run_seconds = statistics.fmean(r["seconds"] for r in runs)
    grid = base.grid(bt, seeds)
    rows: dict[str, list[dict[str, Any]]] = {"grid": [{"metric": grid["best"], "seconds": grid["seconds"]}]}
    rows["cosine"] = [base.cosine_grid(bt, seeds, grid["best_lr"])]
    for b in BUDGETS:
        rows[f"tune@{b:g}"] = [tuned(bt, b, s) for s in seeds]
    for kind in LR_FREE:
        rows[kind] = [base.lr_free(bt, kind, s) for s in seeds]
    wall = statistics.fmean(r["seconds"] for r in rows["tune@2"])
    rows["optuna"] = [base.optuna_study(bt, s, wall, grid["lrs"]) for s in seeds]
    summary = {}
    for name, got in rows.items():
        finite = [r["metric"] for r in got if math.isfinite(r["metric"])]
        summary[name] = {"metric": statistics.fmean(finite) if finite else math.nan,
                         "regret": statistics.fmean(base.regret(r["metric"], grid["best"], higher) for r in got),
                         "cost": statistics.fmean(r["seconds"] for r in got) / run_seconds}
    return {"task": bt.name, "higher_is_better": higher, "run_seconds": run_seconds, "grid": grid, "rows": rows,
            "summary": summary, "checkpoint_bytes": base.checkpoint_bytes(bt), "seconds": time.time() - began}


def print_tables(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="validation metric [regret against the grid's best] (wall time in runs of the task)")
    table.add_column("task")
    table.add_column("one run", justify="right")
    for m in METHODS:
        table.add_column(m, justify="right")
    for r in results:
        s = r["summary"]
        table.add_row(r["task"], f"{r['run_seconds']:.2g} s",
                      *(f"{s[m]['metric']:.4g} [{s[m]['regret']:+.3f}] ({s[m]['cost']:.2g})" for m in METHODS))
    Console(width=300).print(table)
    summary = Table(title="regret against the best constant LR of the grid (mean of 2 seeds per task)")
    for col in ("method", "mean", "median", "worst", "at or above the grid (≤ 0.005)", "wall time (runs): mean",
                "worst on runs ≥ 5 s", "seed spread (mean max−min regret)"):
        summary.add_column(col, justify="right")
    for m in METHODS:
        regrets = [r["summary"][m]["regret"] for r in results]
        costs = [r["summary"][m]["cost"] for r in results]
        long = [r["summary"][m]["cost"] for r in results if r["run_seconds"] >= 5] or [math.nan]
        summary.add_row(m, f"{statistics.fmean(regrets):.3f}", f"{statistics.median(regrets):.3f}",
                        f"{max(regrets):.3f}", f"{sum(x <= 0.005 for x in regrets)}/{len(regrets)}",
                        f"{statistics.fmean(costs):.2f}", f"{max(long):.2f}", f"{_spread(results, m):.3f}")
    Console(width=200).print(summary)
    print_breakdown(results)


def _spread(results: list[dict[str, Any]], method: str) -> float:
    """The mean over tasks of the gap between the best and the worst seed's regret (0 for the grid: one mean)."""
    gaps = []
    for r in results:
        best, higher = r["grid"]["best"], r["higher_is_better"]
        regrets = [base.regret(x["metric"], best, higher) for x in r["rows"][method]]
        gaps.append(max(regrets) - min(regrets))
    return statistics.fmean(gaps)


def print_breakdown(results: list[dict[str, Any]]) -> None:
    """Where tune@2's wall time went, in runs of the task: each stage (its training, validation, checkpoint I/O
    and bookkeeping together), the whole call, and its peak disk against one checkpoint of model and optimizer."""
    from rich.console import Console
    from rich.table import Table

    names = ("clock", "lr_range", "batch", "accumulation", "lr_search", "epochs", "schedule")
    table = Table(title="tune@2: wall time by stage, in runs of the task (mean of the seeds), and peak disk")
    for col in ("task", "one run", *names, "outside the stages", "tune@2", "peak disk / one checkpoint"):
        table.add_column(col, justify="right")
    for r in results:
        rows, run = r["rows"]["tune@2"], r["run_seconds"]
        by = [statistics.fmean(x["stages"][n]["seconds"] for x in rows) / run for n in names]
        whole = statistics.fmean(x["seconds"] for x in rows) / run
        disk = max(x["peak_disk_bytes"] for x in rows) / r["checkpoint_bytes"]
        table.add_row(r["task"], f"{run:.2g} s", *(f"{v:.2f}" for v in by), f"{whole - sum(by):.2f}",
                      f"{whole:.2f}", f"{disk:.2f}")
    Console(width=250).print(table)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", default=",".join(CHOSEN))
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--late", action="store_true", help="the five tasks written after tune's rules")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the issue's figures: one)")
    parser.add_argument("--out", default="benchmarks/results/tune.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tasks = ",".join(bt.name for bt in lr_corpus.TASKS if bt.held_out) if args.late else args.tasks
    names = [n for n in tasks.split(",") if not (args.skip_minilm and n.startswith("minilm"))]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {r["task"]: r for r in json.loads(out.read_text())} if out.exists() else {}
    by_name = {bt.name: bt for bt in lr_corpus.TASKS}
    for name in names:
        if name not in done:
            done[name] = bench(by_name[name], seeds)
            print(f"{name}: {done[name]['seconds']:.0f} s", file=sys.stderr, flush=True)
            out.write_text(json.dumps(list(done.values()), indent=1, default=str))
    print_tables([done[n] for n in names])


if __name__ == "__main__":
    main()
