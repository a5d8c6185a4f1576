"""How the LR-suggestion benchmark trains and scores: a cache, constant-LR runs, range tests, regret.

Regret = (best - metric) / (best - untrained) clipped to [0, 1], where best is the grid's best LR; a run
that diverged has regret 1. Every training result is cached by task, steps, LR and seed.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lr_tasks import BenchTask

import gradpilot
from gradpilot.lr import suggest
from gradpilot.scaling import optimizer_family
from gradpilot.train.batches import compute_loss, cycle

TRAIN_SEEDS = (0, 1)


class Cache:
    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        self.data: dict[str, Any] = {} if fresh or not path.exists() else json.loads(path.read_text())

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self.data:
            self.data[key] = compute()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data))
            tmp.replace(self.path)
        return self.data[key]


def evaluate(task: gradpilot.Task, model: torch.nn.Module | None = None) -> float:
    model = model if model is not None else task.model
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in task.val_loader():
            total += task.metric(model(x), y) * len(y)
            count += len(y)
    model.train()
    return total / count


def _train(task: gradpilot.Task, opt: torch.optim.Optimizer, steps: int, seed: int,
           after_step: Callable[[], None] = lambda: None) -> bool:
    """``steps`` optimizer steps; False if the loss stopped being finite."""
    batches = cycle(task.train_loader(seed))
    task.model.train()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = compute_loss(task.model, next(batches), task.loss_fn, None)
        if not torch.isfinite(loss):
            return False
        loss.backward()
        for group in opt.param_groups:  # LDoG steps every parameter it holds: one the loss does not reach gets 0
            for p in group["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        opt.step()
        after_step()
    return True


def train_eval(bt: BenchTask, lr: float | None, seed: int) -> float:
    """Metric after ``bt.steps`` steps at constant ``lr`` (None: untrained); NaN if training diverged."""
    task = bt.make(seed)
    torch.manual_seed(seed)
    if lr is not None and not _train(task, task.make_optimizer(lr), bt.steps, seed):
        return float("nan")
    value = evaluate(task)
    return value if math.isfinite(value) else float("nan")


def lr_free_eval(bt: BenchTask, kind: str, seed: int) -> float:
    """Metric after ``bt.steps`` steps of an LR-free optimizer as its README sets it up (LDoG judged on its
    polynomial-decay average, Prodigy at lr=1)."""
    task = bt.make(seed)
    torch.manual_seed(seed)
    decay = float(task.optimizer_kwargs.get("weight_decay", 0.0))
    params = [p for p in task.model.parameters() if p.requires_grad]
    if kind == "prodigy":
        from prodigyopt import Prodigy

        ok = _train(task, Prodigy(params, lr=1.0, weight_decay=decay), bt.steps, seed)
        judged = task.model
    else:
        from dog import LDoG, PolynomialDecayAverager

        averager = PolynomialDecayAverager(task.model)
        ok = _train(task, LDoG(params, weight_decay=decay), bt.steps, seed, averager.step)
        judged = averager.averaged_model
    value = evaluate(task, judged) if ok else float("nan")
    return value if math.isfinite(value) else float("nan")


def range_test(bt: BenchTask, seed: int) -> dict[str, list[float]]:
    """gradpilot's range test with its defaults; the curve is kept so every rule can be read off it."""
    task = bt.make(seed)
    torch.manual_seed(seed)
    res = gradpilot.find_lr(task.model, task.make_optimizer(), task.loss_fn, task.train_loader(seed))
    return {"lrs": list(res.lrs), "losses": list(res.losses), "smoothed": list(res.smoothed_losses)}


def curve_of(bt: BenchTask, raw: dict[str, list[float]]) -> suggest.Curve:
    task = bt.make(0)
    n = len(raw["smoothed"])
    opt = task.make_optimizer()
    return suggest.Curve(np.array(raw["lrs"][:n]), np.array(raw["losses"][:n]), np.array(raw["smoothed"]),
                         optimizer_family(task.optimizer_name), suggest.momentum_of(opt.param_groups[0]))


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


class Scorer:
    """A task's grid and the regret of any LR on it, trained for real (cached)."""

    def __init__(self, bt: BenchTask, cache: Cache) -> None:
        self.bt, self.cache = bt, cache
        self.untrained = self.metric(None)
        grid = {lr: self.metric(lr) for lr in bt.grid}
        finite = {lr: m for lr, m in grid.items() if not math.isnan(m)}
        self.best_lr = max(finite, key=lambda lr: finite[lr])
        self.best = finite[self.best_lr]
        self.grid_regret = {lr: self.regret_of(m) for lr, m in grid.items()}

    def metric(self, lr: float | None) -> float:
        key = "untrained" if lr is None else f"{lr:.4e}"
        name, steps = self.bt.name, self.bt.steps
        values = [self.cache.get(f"{name}@{steps}|{key}|{s}", lambda s=s: train_eval(self.bt, lr, s))
                  for s in TRAIN_SEEDS]
        return float("nan") if any(v is None or math.isnan(v) for v in values) else float(np.mean(values))

    def lr_free(self, kind: str) -> float:
        values = [self.cache.get(f"{self.bt.name}@{self.bt.steps}|{kind}|{s}",
                                 lambda s=s: lr_free_eval(self.bt, kind, s)) for s in TRAIN_SEEDS]
        return self.regret_of(float("nan") if any(v is None or math.isnan(v) for v in values) else
                              float(np.mean(values)))

    def regret_of(self, m: float) -> float:
        if math.isnan(m):
            return 1.0
        return float(min(1.0, max(0.0, (self.best - m) / (self.best - self.untrained))))

    def regret(self, lr: float) -> float:
        """Trained for real at ``lr``, rounded to 3 significant digits so near-equal picks share a run."""
        return self.regret_of(self.metric(float(f"{lr:.3g}")))

    def interpolated(self, lr: float) -> float:
        """Regret read off the grid (linear in log-LR); beyond the grid, its end's regret."""
        lrs = np.log(np.array(self.bt.grid))
        values = np.array([self.grid_regret[lr] for lr in self.bt.grid])
        return float(np.interp(math.log(lr), lrs, values))
