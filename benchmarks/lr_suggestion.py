"""How far from the grid optimum does each LR suggestion rule land?

For every task: a log grid of constant LRs trained for a fixed budget (2 seeds each) gives the best
achievable metric; range tests (2 seeds) give each rule's pick, which is then trained the same way.
Regret = (best - metric) / (best - untrained), clipped to [0, 1]; a diverged run has regret 1.

    python benchmarks/lr_suggestion.py            # all tasks, resumes from benchmarks/results/
    python benchmarks/lr_suggestion.py --tasks digits-cnn-sgdm --fresh

Results are cached in benchmarks/results/lr_suggestion.json, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lr_tasks import TASKS, BenchTask

import gradpilot
from gradpilot import suggest
from gradpilot._batch import compute_loss, cycle
from gradpilot.scaling import optimizer_family

CACHE = Path(__file__).parent / "results" / "lr_suggestion.json"
TRAIN_SEEDS = (0, 1)
RANGE_SEEDS = (0, 1)
console = Console(width=150)


class Cache:
    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        self.data: dict[str, object] = {} if fresh or not path.exists() else json.loads(path.read_text())

    def get(self, key: str, compute):  # type: ignore[no-untyped-def]
        if key not in self.data:
            self.data[key] = compute()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data))
            tmp.replace(self.path)
        return self.data[key]


def evaluate(task: gradpilot.Task) -> float:
    model = task.model
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in task.val_loader():
            total += task.metric(model(x), y) * len(y)
            count += len(y)
    model.train()
    return total / count


def train_eval(bt: BenchTask, lr: float | None, seed: int) -> float:
    """Metric after ``bt.steps`` steps at constant ``lr`` (None: untrained); NaN if training diverged."""
    task = bt.make(seed)
    if lr is not None:
        torch.manual_seed(seed)
        opt = task.make_optimizer(lr)
        batches = cycle(task.train_loader(seed))
        task.model.train()
        for _ in range(bt.steps):
            opt.zero_grad(set_to_none=True)
            loss = compute_loss(task.model, next(batches), task.loss_fn, None)
            if not torch.isfinite(loss):
                return float("nan")
            loss.backward()
            opt.step()
    value = evaluate(task)
    return value if math.isfinite(value) else float("nan")


def range_test(bt: BenchTask, seed: int) -> dict[str, object]:
    task = bt.make(seed)
    torch.manual_seed(seed)
    res = gradpilot.find_lr(task.model, task.make_optimizer(), task.loss_fn, task.train_loader(seed))
    return {"lrs": list(res.lrs), "losses": list(res.losses), "smoothed": list(res.smoothed_losses)}


def torch_lr_finder_pick(bt: BenchTask, seed: int) -> float:
    """The suggestion of pytorch-lr-finder's own package (steepest gradient of its smoothed curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch_lr_finder import LRFinder

    task = bt.make(seed)
    torch.manual_seed(seed)
    finder = LRFinder(task.model, task.make_optimizer(), task.loss_fn, device="cpu")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        finder.range_test(task.train_loader(seed), start_lr=1e-7, end_lr=10, num_iter=100)
        fig, ax = plt.subplots()
        _, lr = finder.plot(ax=ax, suggest_lr=True)
        plt.close(fig)
    return float(lr)


def picks(bt: BenchTask, cache: Cache, seed: int) -> dict[str, float]:
    curve = cache.get(f"{bt.name}|range|{seed}", lambda: range_test(bt, seed))
    n = len(curve["smoothed"])
    family = optimizer_family(bt.make(seed).optimizer_name)
    c = suggest.Curve(np.array(curve["lrs"][:n]), np.array(curve["losses"][:n]), np.array(curve["smoothed"]), family)
    out = {name: float(rule(c)) for name, rule in suggest.RULES.items()}
    out["pytorch-lr-finder"] = cache.get(f"{bt.name}|tlf|{seed}", lambda: torch_lr_finder_pick(bt, seed))
    return out


def metric_at(bt: BenchTask, cache: Cache, lr: float | None) -> float:
    key = "untrained" if lr is None else f"{lr:.4e}"
    values = [cache.get(f"{bt.name}@{bt.steps}|{key}|{s}", lambda s=s: train_eval(bt, lr, s)) for s in TRAIN_SEEDS]
    return float("nan") if any(v is None or math.isnan(v) for v in values) else float(np.mean(values))


def regret(best: float, untrained: float, m: float) -> float:
    if math.isnan(m):
        return 1.0
    return float(min(1.0, max(0.0, (best - m) / (best - untrained))))


def run(tasks: list[BenchTask], cache: Cache) -> None:
    rules = [*suggest.RULES, "pytorch-lr-finder"]
    table = Table(title="LR suggestion regret (0 = as good as the grid's best, 1 = no better than untrained)")
    table.add_column("task")
    table.add_column("grid best LR", justify="right")
    for r in rules:
        table.add_column(r + (" (default)" if r == suggest.DEFAULT_RULE else ""), justify="right")
    per_rule: dict[str, list[float]] = {r: [] for r in rules}
    held: dict[str, list[float]] = {r: [] for r in rules}
    for bt in sorted(tasks, key=lambda t: t.held_out):
        if bt.held_out and not any(held.values()):
            table.add_section()
        t0 = time.time()
        untrained = metric_at(bt, cache, None)
        grid = {lr: metric_at(bt, cache, lr) for lr in bt.grid}
        finite = {lr: m for lr, m in grid.items() if not math.isnan(m)}
        best_lr = max(finite, key=finite.get)
        best = finite[best_lr]
        cells = []
        for r in rules:
            scores, lrs = [], []
            for seed in RANGE_SEEDS:
                lr = picks(bt, cache, seed)[r]
                lrs.append(lr)
                scores.append(regret(best, untrained, metric_at(bt, cache, lr)))
            (held if bt.held_out else per_rule)[r].append(float(np.mean(scores)))
            cells.append(f"{np.mean(scores):.2f} @{np.exp(np.mean(np.log(lrs))):.1e}")
        table.add_row(bt.name + (" (held out)" if bt.held_out else ""), f"{best_lr:.1e}", *cells)
        console.log(f"{bt.name}: best {best:.4f} at {best_lr:.1e}, untrained {untrained:.4f} ({time.time() - t0:.0f}s)")
    for title, group in (("", per_rule), ("held out: ", held), ("all: ", {r: per_rule[r] + held[r] for r in rules})):
        if not group[rules[0]]:
            continue
        table.add_section()
        for label, fn in (("mean", statistics.mean), ("median", statistics.median), ("worst", max)):
            table.add_row(title + label, "", *[f"{fn(group[r]):.3f}" for r in rules])
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", help="task names (default: all)")
    parser.add_argument("--fresh", action="store_true", help="ignore cached results")
    parser.add_argument("--cache", type=Path, default=CACHE)
    args = parser.parse_args()
    chosen = [t for t in TASKS if not args.tasks or t.name in args.tasks]
    torch.set_num_threads(2)
    run(chosen, Cache(args.cache, args.fresh))


if __name__ == "__main__":
    main()
