"""``tune``'s last two stages: the epochs (a run with early stopping at the chosen LR and batch) and the
schedule (the same epochs under a decaying schedule, against the constant LR); the better one's weights
become ``model.pt``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import DataLoader

from gradpilot import _checkpoint
from gradpilot._direction import better
from gradpilot._stages import MIN_LR_RATE, Stage, _Context, _least_epochs
from gradpilot._workers import worker_id
from gradpilot.early_stopping import EarlyStopping
from gradpilot.training import FitResult, fit


def epochs(ctx: _Context) -> Stage:
    """A run at the chosen LR and batch with early stopping on validation: its best epoch is the epoch count."""
    fixed = ctx.fixed.get("num_train_epochs")
    most = int(fixed) if fixed is not None else _most_epochs(ctx)
    if fixed is None and _one_run(ctx, most):
        return _task_epochs(ctx)
    patience = max(3, math.ceil(0.25 * most))
    ctx.say(f"constant LR for up to {most} epochs")
    result, warm = _train(ctx, "constant", most, None if fixed is not None else EarlyStopping(patience=patience))
    score = _score(result)
    stopped = fixed is None and result.epochs_completed < most  # early stopping saw validation turn
    # validation that never turned (best within the last `patience` epochs) is no reason to train less
    chosen = int(fixed) if fixed is not None else int(result.best_epoch or most) if stopped else most
    why = f"fixed at {chosen}" if fixed is not None else (
        f"validation was best after epoch {chosen} of {result.epochs_completed} ({result.stop_reason})" if stopped
        else f"validation did not turn in {most} epochs (best at epoch {result.best_epoch}): all {most} are kept")
    return Stage("epochs", {"num_train_epochs": chosen, "warmup_steps": warm, "constant_metric": score,
                            "decay_epochs": chosen},
                 why, evidence={"val_metrics": list(result.val_metrics), "max_epochs": most, "patience": patience,
                                "lrs": list(result.lrs)},
                 samples=_charge_run(ctx, result), skipped="fixed" if fixed is not None else "")


def _one_run(ctx: _Context, most: int) -> bool:
    """Whether the budget left pays for one full run but would cut two by more than a quarter: then the
    early-stopping run is skipped and the one run goes to the decaying schedule over the task's epochs."""
    decays = ctx.fixed.get("lr_scheduler_type") not in ("constant", "constant_with_warmup")
    return decays and most < _least_epochs(ctx) and ctx.left >= ctx.run_samples


def _task_epochs(ctx: _Context) -> Stage:
    n = ctx.task.epochs
    return Stage("epochs", {"num_train_epochs": n, "warmup_steps": _warmup_steps(ctx, n), "constant_metric": None,
                            "decay_epochs": n},
                 f"the budget left pays for one full run, not two: the task's {n} epochs are kept and trained once, "
                 "under the decaying schedule", skipped="budget")


def _most_epochs(ctx: _Context) -> int:
    """The task's epochs, fewer when the budget left cannot pay for them twice (this run and the next)."""
    per_epoch = ctx.train_items
    return max(1, min(ctx.task.epochs, ctx.left // (2 * per_epoch) or ctx.left // per_epoch))


def schedule(ctx: _Context) -> Stage:
    """The constant LR against warmup + cosine to 1% of the peak; the better validation score wins and its
    weights become model.pt. The decay runs over the epochs early stopping chose when it stopped the run
    (validation turned), else over all the epochs the constant run had: a decaying schedule is made to end at
    its end, and the best of a few noisy epochs that never turned is no reason to cut it short."""
    n, constant = int(ctx.values["decay_epochs"]), ctx.values["constant_metric"]
    fixed = ctx.fixed.get("lr_scheduler_type")
    name = fixed or "cosine_with_min_lr"
    if fixed in ("constant", "constant_with_warmup") or (fixed is None and n * ctx.train_items > ctx.left):
        reason = "fixed" if fixed else "budget"
        return Stage("schedule", {**_kept_constant(ctx), "trained_by": _trained_by(ctx)}, f"constant LR ({reason})",
                     skipped=reason)
    ctx.say(f"{name} over {n} epochs")
    result, _ = _train(ctx, name, n, None)
    score = _score(result)
    wins = fixed is not None or constant is None or better(score, float(constant),
                                                           higher_is_better=ctx.task.higher_is_better)
    options = {"min_lr": MIN_LR_RATE * float(ctx.values["learning_rate"])} if name == "cosine_with_min_lr" else {}
    decision = {"lr_scheduler_type": name, "lr_scheduler_kwargs": options, "metric": score, "num_train_epochs": n,
                "model_file": f"{name}.pt"} if wins else _kept_constant(ctx)
    tried = [{name: score}] if constant is None else [{"constant": constant}, {name: score}]
    why = _schedule_why(name, n, score, constant, wins)
    return Stage("schedule", {**decision, "trained_by": _trained_by(ctx)}, why, alternatives=tried,
                 evidence={"val_metrics": list(result.val_metrics), "lrs": list(result.lrs)},
                 samples=_charge_run(ctx, result), skipped="fixed" if fixed else "")


def _schedule_why(name: str, n: int, score: float, constant: float | None, wins: bool) -> str:
    if constant is None:
        return f"{name} over {n} epochs validates at {score:.4g}, the one run the budget paid for"
    return (f"{name} over {n} epochs validates at {score:.4g} against the constant LR's {constant:.4g}: "
            + ("kept" if wins else "the constant LR is kept"))


def _trained_by(ctx: _Context) -> str:
    """Which worker holds the final run's weights, and where (another machine's worker keeps them there)."""
    return f"{worker_id()} in {ctx.out.resolve()}"


def _kept_constant(ctx: _Context) -> dict[str, Any]:
    name = "constant_with_warmup" if ctx.values["warmup_steps"] else "constant"
    return {"lr_scheduler_type": name, "lr_scheduler_kwargs": {}, "metric": ctx.values["constant_metric"],
            "model_file": "constant.pt"}


def _train(ctx: _Context, name: str, n_epochs: int, stopper: EarlyStopping | None) -> tuple[FitResult, int]:
    """``fit`` from the initial weights at the decided LR and batch; resumable through its checkpoint folder.
    The best weights are saved as runs/NAME.pt. Returns the run and its warmup steps."""
    task, v = ctx.task, ctx.values
    micro, k = int(v["micro_batch"]), int(v["accumulation"])
    warm = v.get("warmup_steps")
    warm = int(warm) if warm is not None else _warmup_steps(ctx, n_epochs)
    options: dict[str, Any] = {"warmup_steps": warm} if warm or name != "constant" else {}
    if name == "constant" and warm:
        name = "constant_with_warmup"
    if name == "cosine_with_min_lr":
        options["min_lr"] = MIN_LR_RATE * float(v["learning_rate"])
    task.model.load_state_dict(ctx.initial)
    dataset, collate = task.dataset()
    loader = DataLoader(dataset, batch_size=micro, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(ctx.seed))
    torch.manual_seed(ctx.seed)
    result = fit(task, task.make_optimizer(float(v["learning_rate"])), train_loader=loader, epochs=n_epochs,
                 accumulation_steps=k, scheduler=name, scheduler_options=options, early_stopping=stopper,
                 checkpoint_dir=ctx.out / "runs" / name)
    kept = "constant" if "constant" in name else name
    _checkpoint.save_file(ctx.out / "runs" / f"{kept}.pt", task.model.state_dict())
    return result, warm


def _warmup_steps(ctx: _Context, n_epochs: int) -> int:
    """The search winner's warmup share, in optimizer steps of an ``n_epochs`` run at its batch."""
    v = ctx.values
    micro, k = int(v["micro_batch"]), int(v["accumulation"])
    steps = math.ceil(math.ceil(ctx.train_items / micro) / k) * n_epochs
    return min(math.ceil(float(v["warmup_ratio"]) * steps), steps - 1)  # a warmup ends before the run does


def _score(result: FitResult) -> float:
    """The validation metric of the weights a run ends with: its best epoch's when early stopping put those
    back, else its last epoch's (what a Trainer following the plan ends with)."""
    if result.restored_best and result.best_metric is not None:
        return float(result.best_metric)
    return float(result.val_metrics[-1]) if result.val_metrics else math.nan


def _charge_run(ctx: _Context, result: FitResult) -> int:
    samples = result.epochs_completed * ctx.train_items
    ctx.charge(samples)
    return samples
