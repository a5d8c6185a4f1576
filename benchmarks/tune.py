"""tune against the alternatives, per task: final validation metric and cost (in runs of the task as written).

    (a) finder   the range test's pick, trained at the task's budget (constant LR)
    (b) search   the budgeted LR search alone (tune with batch, epochs and a constant schedule fixed), budget 2
    (c) tune     tune's full plan, budget 3
    (d) grid     the best constant LR of the task's log grid (>= 10 points), mean over 2 seeds
    (e) prodigy  Prodigy at lr=1 with cosine annealing (its README's advice), one run
        ldog     LDoG with its polynomial-decay iterate averaging (its README's advice), one run
        sfree    AdamWScheduleFree at its default lr with 5% warmup, evaluated in eval mode, one run

Regret is the relative gap to the grid's best: (best - x) / |best| when higher is better, negative when x beats
it. The task epochs are set so a run is the step budget each task has in benchmarks/lr_tasks.py.

    python benchmarks/tune.py [--tasks a,b] [--skip-minilm] [--out benchmarks/results/tune.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lr_corpus
import lr_tasks

from gradpilot import Task, find_lr, fit
from gradpilot._batch import compute_loss, to_device
from gradpilot.evaluation import evaluate
from gradpilot.tuning import tune

CHOSEN = ("spirals-mlp-adamw", "digits-cnn-sgdm", "friedman-mlp-sgd", "count-gru-rmsprop", "max-transformer-adamw",
          "charlm-lstm-adam", "moons-mlp-nesterov", "regression-mlp-nadam", "minilm-finetune-adamw")
METHODS = ("finder", "search", "tune", "grid", "prodigy", "ldog", "sfree")


def as_written(bt: lr_tasks.BenchTask, seed: int) -> Task:
    """The task with epochs set so that one run is (about) its step budget."""
    task = bt.make(seed)
    if bt.name.startswith("spirals"):
        return task
    steps = math.ceil(len(task.dataset()[0]) / task.batch_size)  # type: ignore[arg-type]
    return dataclasses.replace(task, epochs=max(2, round(bt.steps / steps)))


def last_metric(task: Task, lr: float, seed: int) -> float:
    torch.manual_seed(seed)
    result = fit(task, task.make_optimizer(lr), train_loader=task.train_loader(seed))
    return float(result.val_metrics[-1])


def grid(bt: lr_tasks.BenchTask) -> tuple[float, float, dict[str, list[float]]]:
    scores = {f"{lr:.3g}": [last_metric(as_written(bt, s), lr, s) for s in (0, 1)] for lr in bt.grid}
    sign = 1.0 if as_written(bt, 0).higher_is_better else -1.0

    def mean(v: list[float]) -> float:
        return statistics.fmean(x if math.isfinite(x) else -sign * 1e9 for x in v)

    best = max(scores, key=lambda k: sign * mean(scores[k]))
    return float(best), mean(scores[best]), scores


def finder(bt: lr_tasks.BenchTask) -> tuple[float, float]:
    task = as_written(bt, 0)
    torch.manual_seed(0)
    pick = find_lr(task, train_loader=task.train_loader(0)).suggestion
    run = len(task.dataset()[0]) * task.epochs  # type: ignore[arg-type]
    return last_metric(as_written(bt, 0), pick, 0), 1 + 100 * task.batch_size / run


def tuned(bt: lr_tasks.BenchTask, *, search_only: bool) -> tuple[float, float, dict[str, object]]:
    task = as_written(bt, 0)
    fixed = {"batch_size": task.batch_size, "epochs": task.epochs, "scheduler": "constant"} if search_only else {}
    with tempfile.TemporaryDirectory() as out:
        r = tune(task, budget=2.0 if search_only else 3.0, out_dir=out, fixed=fixed)
    return r.metric, r.spent, r.plan


def lr_free(bt: lr_tasks.BenchTask, kind: str) -> float:
    """One run of an LR-free optimizer, as its README recommends."""
    task = as_written(bt, 0)
    torch.manual_seed(0)
    model, loader = task.model, task.train_loader(0)
    total = len(loader) * task.epochs
    decay = float(task.optimizer_kwargs.get("weight_decay", 0.0))
    params = [p for p in model.parameters() if p.requires_grad]
    sched, averager = None, None
    if kind == "prodigy":
        from prodigyopt import Prodigy

        opt = Prodigy(params, lr=1.0, weight_decay=decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    elif kind == "ldog":
        from dog import LDoG, PolynomialDecayAverager

        opt = LDoG(params, weight_decay=decay)
        averager = PolynomialDecayAverager(model)
    else:
        from schedulefree import AdamWScheduleFree

        opt = AdamWScheduleFree(params, weight_decay=decay, warmup_steps=max(1, total // 20))
    for _ in range(task.epochs):
        model.train()
        if kind == "sfree":
            opt.train()
        for batch in loader:
            opt.zero_grad()
            compute_loss(model, to_device(batch, torch.device("cpu")), task.loss_fn, None).backward()
            for p in params:  # LDoG steps every parameter it was given: one the loss does not reach gets 0
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            opt.step()
            if sched is not None:
                sched.step()
            if averager is not None:
                averager.step()
    if kind == "sfree":
        opt.eval()
    judged = averager.averaged_model if averager is not None else model
    return evaluate(judged, task.val_loader(), task.loss_fn, task.metric)


def regret(x: float, best: float, higher: bool) -> float:
    if not math.isfinite(x):
        return 1.0
    gap = (best - x) if higher else (x - best)
    return gap / max(abs(best), 1e-12)


def bench(bt: lr_tasks.BenchTask) -> dict[str, object]:
    t0 = time.time()
    higher = as_written(bt, 0).higher_is_better
    best_lr, best, scores = grid(bt)
    rows: dict[str, dict[str, float]] = {"grid": {"metric": best, "runs": 2.0 * len(bt.grid)}}
    metric, runs = finder(bt)
    rows["finder"] = {"metric": metric, "runs": runs}
    metric, runs, _ = tuned(bt, search_only=True)
    rows["search"] = {"metric": metric, "runs": runs}
    metric, runs, plan = tuned(bt, search_only=False)
    rows["tune"] = {"metric": metric, "runs": runs}
    for kind in ("prodigy", "ldog", "sfree"):
        rows[kind] = {"metric": lr_free(bt, kind), "runs": 1.0}
    for row in rows.values():
        row["regret"] = regret(row["metric"], best, higher)
    return {"task": bt.name, "higher_is_better": higher, "grid_best_lr": best_lr, "grid": scores, "rows": rows,
            "plan": plan, "seconds": time.time() - t0}


def print_tables(results: list[dict[str, object]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="tune benchmark: validation metric (cost in runs) [regret vs grid best]")
    table.add_column("task")
    for m in METHODS:
        table.add_column(m, justify="right")
    for r in results:
        rows = r["rows"]  # type: ignore[index]
        table.add_row(str(r["task"]), *(f"{rows[m]['metric']:.4g} ({rows[m]['runs']:.2g}) [{rows[m]['regret']:+.3f}]"
                                        for m in METHODS))
    Console(width=250).print(table)
    summary = Table(title="regret against the grid's best constant LR")
    for col in ("method", "mean", "median", "worst", "≤ grid (regret ≤ 0.005)", "mean cost (runs)"):
        summary.add_column(col, justify="right")
    for m in METHODS:
        regs = [r["rows"][m]["regret"] for r in results]  # type: ignore[index]
        costs = [r["rows"][m]["runs"] for r in results]  # type: ignore[index]
        summary.add_row(m, f"{statistics.fmean(regs):.3f}", f"{statistics.median(regs):.3f}", f"{max(regs):.3f}",
                        f"{sum(x <= 0.005 for x in regs)}/{len(regs)}", f"{statistics.fmean(costs):.2f}")
    Console(width=200).print(summary)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", default=",".join(CHOSEN))
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/tune.json")
    args = parser.parse_args()
    names = [n for n in args.tasks.split(",") if not (args.skip_minilm and n.startswith("minilm"))]
    by_name = {bt.name: bt for bt in lr_corpus.TASKS}
    results = []
    for name in names:
        results.append(bench(by_name[name]))
        print(f"{name}: {results[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    print_tables(results)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
