"""What benchmarks/tune.py compares tune with: one run of the task as written, the constant and cosine LR grids,
the LR-free optimizers (one run each), and the Optuna study a user would hand-wire. Each returns its validation
metric and the wall seconds it took."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any

import lr_tasks
import torch

from gradpilot import Task, fit
from gradpilot.train.batches import compute_loss, to_device
from gradpilot.train.evaluation import evaluate
from gradpilot.train.run import Setting, local_run
from gradpilot.train.state import model_state


def as_written(bt: lr_tasks.BenchTask, seed: int) -> Task:
    """The task with epochs set so that one run is (about) its step budget."""
    task = bt.make(seed)
    if bt.name.startswith("spirals"):
        return task
    steps = math.ceil(len(task.dataset()[0]) / task.batch_size)  # type: ignore[arg-type]
    return dataclasses.replace(task, epochs=max(2, round(bt.steps / steps)))


def _fit(bt: lr_tasks.BenchTask, lr: float | None, seed: int, scheduler: str | None = None) -> dict[str, Any]:
    """One run of the task (validated each epoch, as the task is written), at ``lr`` (the task's own when None)."""
    task = as_written(bt, seed)
    torch.manual_seed(seed)
    start = time.perf_counter()
    result = fit(task, task.make_optimizer(lr), train_loader=task.train_loader(seed), scheduler=scheduler)
    return {"metric": float(result.val_metrics[-1]), "seconds": time.perf_counter() - start, "lr": lr}


def one_run(bt: lr_tasks.BenchTask, seed: int) -> dict[str, Any]:
    """One run as written: the unit every cost is measured in."""
    return _fit(bt, None, seed)


def grid(bt: lr_tasks.BenchTask, seeds: list[int]) -> dict[str, Any]:
    """The constant-LR grid (every other point of the task's 6-a-decade grid: 3 a decade), each LR on every
    seed; the best LR by the mean over seeds."""
    lrs = list(bt.grid[::2])
    runs = {lr: [_fit(bt, lr, s) for s in seeds] for lr in lrs}
    higher = as_written(bt, 0).higher_is_better
    means = {lr: statistics.fmean(finite(r["metric"], higher) for r in rs) for lr, rs in runs.items()}
    best = max(means, key=lambda lr: means[lr] if higher else -means[lr])
    return {"best_lr": best, "best": means[best], "lrs": lrs, "means": {f"{lr:.3g}": m for lr, m in means.items()},
            "seconds": sum(r["seconds"] for rs in runs.values() for r in rs)}


def cosine_grid(bt: lr_tasks.BenchTask, seeds: list[int], center: float) -> dict[str, Any]:
    """A cosine schedule at 5 LRs a quarter and a half decade around ``center``: the best mean over seeds."""
    lrs = [center * 10 ** (k / 4) for k in range(-2, 3)]
    higher = as_written(bt, 0).higher_is_better
    runs = {lr: [_fit(bt, lr, s, "cosine") for s in seeds] for lr in lrs}
    means = {lr: statistics.fmean(finite(r["metric"], higher) for r in rs) for lr, rs in runs.items()}
    best = max(means, key=lambda lr: means[lr] if higher else -means[lr])
    return {"metric": means[best], "lr": best, "seconds": sum(r["seconds"] for rs in runs.values() for r in rs)}


def _lr_free_optimizer(kind: str, params: list[torch.nn.Parameter], total: int, decay: float) -> tuple[Any, Any]:
    """The optimizer (and scheduler) of an LR-free row, as its authors recommend it."""
    if kind == "prodigy":
        from prodigyopt import Prodigy

        opt: Any = Prodigy(params, lr=1.0, weight_decay=decay)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if kind == "sfplus":
        from schedulefree_plus import ScheduleFreePlus

        warm = max(1, total // 20)
        return ScheduleFreePlus(params, warmup_steps=warm, anneal_steps=total // 2, weight_decay=decay), None
    from schedulefree import AdamWScheduleFree

    if kind == "sf-algoperf":  # the self-tuning recipe schedulefree ships for AlgoPerf (algoperf/self_tuning)
        return AdamWScheduleFree(params, lr=0.0025, betas=(0.9, 0.9955159689799007), weight_decay=0.08121616522670176,
                                 warmup_steps=max(1, round(0.02 * total)), r=0.75, weight_lr_power=2.0), None
    return AdamWScheduleFree(params, weight_decay=decay, warmup_steps=max(1, total // 20)), None


SCHEDULE_FREE = ("sfree", "sf-algoperf", "sfplus")


def lr_free(bt: lr_tasks.BenchTask, kind: str, seed: int) -> dict[str, Any]:
    """One run of an LR-free optimizer (prodigy, sfree, sf-algoperf, sfplus), as its authors recommend it; the
    schedule-free ones are validated at their average (eval mode)."""
    task = as_written(bt, seed)
    torch.manual_seed(seed)
    start = time.perf_counter()
    model, loader = task.model, task.train_loader(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = _lr_free_optimizer(kind, params, len(loader) * task.epochs,
                                    float(task.optimizer_kwargs.get("weight_decay", 0.0)))
    for _ in range(task.epochs):
        model.train()
        if kind in SCHEDULE_FREE:
            opt.train()
        for batch in loader:
            opt.zero_grad()
            loss = compute_loss(model, to_device(batch, torch.device("cpu")), task.loss_fn, None)
            loss.backward()
            opt.step(loss.item()) if kind == "sfplus" else opt.step()
            if sched is not None:
                sched.step()
        if kind in SCHEDULE_FREE:
            opt.eval()
        evaluate(model, task.val_loader(), task.loss_fn, task.metric)  # the run as written validates each epoch
    return {"metric": evaluate(model, task.val_loader(), task.loss_fn, task.metric),
            "seconds": time.perf_counter() - start}


def optuna_study(bt: lr_tasks.BenchTask, seed: int, seconds: float, lrs: list[float]) -> dict[str, Any]:
    """What a user would hand-wire: TPE over log-LR in the grid's range, Hyperband pruning on epochs (each trial
    validated every epoch at a constant LR), stopped after ``seconds``; the best trial's metric."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    task = as_written(bt, seed)
    higher, epochs = task.higher_is_better, task.epochs
    per_epoch = math.ceil(len(task.dataset()[0]) / task.batch_size)  # type: ignore[arg-type]
    study = optuna.create_study(direction="maximize" if higher else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs))

    def objective(trial: optuna.Trial) -> float:
        made = as_written(bt, seed)
        run = local_run(made, Setting(trial.suggest_float("lr", min(lrs), max(lrs), log=True), made.batch_size),
                       seed=seed + trial.number, weights=model_state(made.model))
        value = math.nan
        for epoch in range(1, epochs + 1):
            run.advance(per_epoch * epoch)
            value = run.evaluate().value
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    start = time.perf_counter()
    study.optimize(objective, timeout=seconds)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_value if done else max(
        (max(t.intermediate_values.values()) if higher else min(t.intermediate_values.values())
         for t in study.trials if t.intermediate_values), default=math.nan)
    return {"metric": best, "seconds": time.perf_counter() - start, "trials": len(study.trials),
            "completed": len(done)}


def checkpoint_bytes(bt: lr_tasks.BenchTask) -> int:
    """One checkpoint of the task's model and optimizer state, as tune's runs save it: the unit of disk."""
    import tempfile
    from pathlib import Path

    task = as_written(bt, 0)
    run = local_run(task, Setting(task.lr, task.batch_size), seed=0, weights=model_state(task.model))
    run.advance(1)  # the optimizer's state exists once it has stepped
    with tempfile.TemporaryDirectory() as folder:
        run.save(Path(folder) / "run.pt")
        return (Path(folder) / "run.pt").stat().st_size


def finite(x: float, higher: bool) -> float:
    """A metric for averaging: a run that blew up scores far below anything else."""
    return x if math.isfinite(x) else (-1e9 if higher else 1e9)


def regret(x: float, best: float, higher: bool) -> float:
    if not math.isfinite(x) or abs(x) >= 1e9:
        return 1.0
    gap = (best - x) if higher else (x - best)
    return gap / max(abs(best), 1e-12)
