"""``tune``'s stages, in the order they run; each is ``(ctx) -> Stage`` and builds on a gradpilot tool:
``find_lr``, ``estimate_noise_scale`` + ``find_batch_size``, ``scaling.plan``, the Optuna LR search (here),
then ``fit`` with early stopping and ``fit`` under a decaying schedule (``gradpilot._final_stages``). A stage
reads what earlier ones decided from ``ctx.values`` and returns its own decision; every item it trains on is
charged to the budget."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from optuna.storages import BaseStorage
from torch.utils.data import DataLoader

from gradpilot import _search, scaling
from gradpilot.batch_size import estimate_noise_scale, find_batch_size
from gradpilot.errors import GradpilotError
from gradpilot.lr_finder import find_lr
from gradpilot.task import Task

MIN_LR_RATE = 0.01  # the decaying schedule ends at 1% of the peak LR
FINAL_SHARE = 0.65  # of the budget left after the batch stage, at most this goes to the last two stages


@dataclass(frozen=True)
class Stage:
    """One stage's outcome: the values it decided, why (one line), what it weighed, its numbers, the training
    items it spent, and, when it did not run, why not (a fixed value, the budget)."""

    name: str
    decision: dict[str, Any]
    why: str
    alternatives: list[Any] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    samples: int = 0
    skipped: str = ""
    seconds: float = 0.0  # wall time the stage took in the worker that ran it


@dataclass
class _Context:
    """A tune in progress: the task, the budget and what is spent of it (items), and the values decided."""

    task: Task
    out: Path
    seed: int
    fixed: dict[str, Any]
    cooldown: float
    train_items: int
    budget_samples: int
    budget: float
    initial: dict[str, torch.Tensor]
    storage: BaseStorage
    prefix: str  # the study names' prefix: workers given the same storage and prefix share the work
    progress: Callable[[str, float], None] | None
    wait: Callable[[], None] | None = None  # called while a worker waits on others (the n_jobs parent watches them)
    on_ray: bool = False  # the search's short runs as Ray Tune trials
    ray_address: str | None = None
    spent: int = 0
    values: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # what a resume must match (tune._settings), as JSON
    task_weights: str = ""  # a digest of the weights the task's model came with, before tune touched them

    def searcher(self) -> _search.Search:
        return _search.Search(self.storage, self.prefix, self.task, self.initial, seed=self.seed,
                              folder=self.out / "runs" / "search", progress=self.say, wait=self.wait,
                              on_ray=self.on_ray, ray_address=self.ray_address)

    @property
    def run_samples(self) -> int:
        return self.train_items * self.task.epochs

    @property
    def left(self) -> int:
        return self.budget_samples - self.spent

    def charge(self, samples: int) -> None:
        self.spent += samples

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message, self.spent / self.run_samples)


RANGE_SHARE = 0.2  # of the budget, at most this goes to the range test
BATCH_SHARE = 0.35  # of what is left after it, at most this goes to the noise-scale and batch trials
MIN_RANGE_STEPS = 10  # the fewest steps find_lr draws a curve from


def _range_steps(ctx: _Context) -> int:
    """Range-test steps: a tenth of a run's steps, between 30 and 100, and never more than RANGE_SHARE of the
    budget (a one-epoch fine-tune has fewer steps in its whole run than a range test's usual 30)."""
    usual = max(30, min(100, round(0.1 * ctx.run_samples / ctx.task.batch_size)))
    return max(MIN_RANGE_STEPS, min(usual, math.floor(RANGE_SHARE * ctx.budget_samples / ctx.task.batch_size)))


def check_budget(ctx: _Context) -> None:
    """Refuse, before any work, a budget that cannot pay for the range test and one epoch, or for fixed epochs,
    and a training set too small to tune on at all."""
    fixed_batch = int(ctx.fixed.get("per_device_train_batch_size", 0)) * int(
        ctx.fixed.get("gradient_accumulation_steps", 1))
    if fixed_batch > ctx.train_items:
        raise GradpilotError(f"the fixed batch ({fixed_batch}) is larger than the training set ({ctx.train_items} "
                             "items): one step would see every item; fix a batch of at most the training set")
    if ctx.train_items < ctx.task.batch_size:
        raise GradpilotError(f"the training set has {ctx.train_items} items, fewer than one batch of "
                             f"{ctx.task.batch_size}: give more data, or a smaller Task.batch_size")
    need = ctx.train_items * int(ctx.fixed.get("num_train_epochs", 1))
    if "learning_rate" not in ctx.fixed:
        need += _range_steps(ctx) * ctx.task.batch_size
    if need > ctx.budget_samples:
        least = math.ceil(100 * need / ctx.run_samples) / 100
        raise GradpilotError(f"budget {ctx.budget:g} runs is too small: the range test and the epochs it must train "
                             f"cost {need / ctx.run_samples:.2f} runs; give a budget of at least {least:g}")


UNSURE = 0.5  # a range test less confident than this leaves the search centred between its pick and its edge


def lr_range(ctx: _Context) -> Stage:
    """An LR range test at the task's batch: a suggestion, and the edge past which the loss climbs."""
    if "learning_rate" in ctx.fixed:
        return Stage("lr_range", {}, "learning_rate is fixed", skipped="fixed")
    steps = _range_steps(ctx)
    ctx.say(f"range test, {steps} steps")
    ctx.task.model.load_state_dict(ctx.initial)
    torch.manual_seed(ctx.seed)
    result = find_lr(ctx.task, train_loader=ctx.task.train_loader(ctx.seed), num_steps=steps)
    ctx.charge(steps * ctx.task.batch_size)
    low, high = result.interval
    why = f"; {result.caveat}" if result.caveat else ""
    return Stage("lr_range", {"lr_found": result.suggestion, "lr_low": low, "lr_edge": high,
                              "lr_confidence": result.confidence},
                 f"range test over {len(result.lrs)} steps suggests {result.suggestion:.3g} ({result.rule}); the curve "
                 f"supports {low:.3g} to {high:.3g}, confidence {result.confidence:.2f}{why}",
                 alternatives=[{"rule": k, "lr": v} for k, v in result.alternatives.items()],
                 evidence={"lrs": list(result.lrs), "losses": list(result.losses),
                           "smoothed_losses": list(result.smoothed_losses), "confidence": result.confidence,
                           "stop": result.stop_reason},
                 samples=steps * ctx.task.batch_size)


def batch(ctx: _Context) -> Stage:
    """The batches worth trying: the task's, and the critical batch the gradient noise scale points to; the
    largest micro-batch that fits memory; the rule that rescales the LR between them."""
    task, b = ctx.task, ctx.task.batch_size
    rule = _rule(task)
    if "per_device_train_batch_size" in ctx.fixed:
        fixed = int(ctx.fixed["per_device_train_batch_size"])
        return Stage("batch", {"batches": [fixed], "max_micro": fixed, "rule": rule}, "batch size is fixed",
                     skipped="fixed")
    if isinstance(task.train_data, DataLoader):
        return Stage("batch", {"batches": [b], "max_micro": b, "rule": rule},
                     "the task gives a ready DataLoader, whose batch size tune keeps", skipped="data loader")
    if ctx.left < ctx.run_samples or _batch_cost(ctx) > BATCH_SHARE * ctx.left:
        return Stage("batch", {"batches": [b], "max_micro": b, "rule": rule},
                     "the budget left cannot pay for measuring the batch: the task's batch is kept", skipped="budget")
    ctx.say("gradient noise scale and memory")
    spent, batches, evidence = _noise_candidates(ctx)
    found = find_batch_size(task, max_batch_size=max(batches), steps_per_trial=1)
    spent += sum(t.batch_size for t in found.trials) + min(batches)
    ctx.charge(spent)
    evidence.update(max_micro=found.batch_size, memory_limit=found.limit,
                    trials=[dataclasses.asdict(t) for t in found.trials])
    return Stage("batch", {"batches": batches, "max_micro": found.batch_size, "rule": rule},
                 _batch_why(b, batches, evidence, rule), alternatives=[{"batch": x} for x in batches],
                 evidence=evidence, samples=spent)


def _noise_batches(ctx: _Context) -> tuple[int, int, int]:
    """The noise-scale estimate's small and big batch and how many of each it averages."""
    b = ctx.task.batch_size
    return max(1, min(8, b // 4)), min(ctx.train_items, max(4 * b, 32)), 8


def _batch_cost(ctx: _Context) -> int:
    """Items the batch stage reads at most: the noise-scale batches, then trials doubling up to 8× the batch
    (about 16 batches in all), then the smaller batch once."""
    small, big, reps = _noise_batches(ctx)
    return reps * (small + big) + 17 * ctx.task.batch_size


def _batch_why(b: int, batches: list[int], evidence: dict[str, Any], rule: str) -> str:
    if "noise_error" in evidence:
        return f"the task's batch {b} is kept: {evidence['noise_error']}"
    if len(batches) > 1:
        return (f"the noise scale puts the critical batch near {evidence['noise_scale']:.0f}: trying "
                f"{' and '.join(map(str, batches))}, LR rescaled by the {rule} rule")
    return f"the task's batch {b} is kept: the noise scale ({evidence['noise_scale']:.0f}) gives no reason to change it"


def _noise_candidates(ctx: _Context) -> tuple[int, list[int], dict[str, Any]]:
    """The items the noise-scale estimate cost, the batches worth trying, and the evidence. An estimate that
    cannot be made (gradient norms too noisy to tell |G|² from the noise) costs a warning and keeps the task's
    batch; it never stops the tune."""
    b, n = ctx.task.batch_size, ctx.train_items
    small, big, reps = _noise_batches(ctx)
    if big <= small:
        return 0, [b], {"noise_scale": float(b)}
    ctx.task.model.load_state_dict(ctx.initial)
    try:
        noise = estimate_noise_scale(ctx.task, small_batch=small, big_batch=big, batches=reps, seed=ctx.seed)
    except GradpilotError as exc:
        why = f"the gradient noise scale could not be measured ({exc})"
        warnings.warn(f"{why}; tune keeps the task's batch {b}", stacklevel=2)
        ctx.say(f"{why}: batch {b} kept")
        return reps * (small + big), [b], {"noise_scale": None, "noise_error": why}
    batches = [b]
    if math.isfinite(noise.b_simple) and noise.b_simple > 0:
        shift = max(-2, min(3, round(math.log2(noise.b_simple / b))))
        other = b * 2**shift if shift >= 0 else max(1, b >> -shift)
        if other != b and n // other >= 8:  # at least 8 steps an epoch
            batches.append(other)
    return reps * (small + big), batches, {"noise_scale": noise.b_simple}


def _rule(task: Task) -> scaling.LRRule:
    try:
        return scaling.resolve_rule("auto", task.optimizer_name)
    except GradpilotError:
        return "none"  # an optimizer gradpilot cannot place: the search measures instead


def accumulation(ctx: _Context) -> Stage:
    """Each batch to try as micro-batch × accumulation steps: accumulate where the batch exceeds memory."""
    batches, max_micro = ctx.values["batches"], int(ctx.values["max_micro"])
    if "gradient_accumulation_steps" in ctx.fixed:
        k = int(ctx.fixed["gradient_accumulation_steps"])
        micro = int(ctx.fixed.get("per_device_train_batch_size", 0)) or max(1, batches[0] // k)
        return Stage("accumulation", {"splits": [[micro, k]]}, "accumulation is fixed", skipped="fixed")
    splits, notes = [], []
    for target in batches:
        p = scaling.plan(target, max_micro)
        splits.append([p.micro_batch_size, p.accumulation_steps])
        notes.append(p.note)
    needed = any(k > 1 for _, k in splits)
    why = "; ".join(notes) if needed else f"every batch tried fits in memory (up to {max_micro}): no accumulation"
    return Stage("accumulation", {"splits": splits}, why, alternatives=notes)


def search(ctx: _Context) -> None:
    """Every worker's part in the LR search: the first to arrive plans it (or says why there is none), then all
    take the short runs, rung by rung, until the last rung's queue is empty."""
    ctx.searcher().run(lambda: _plan_note(ctx))


def _plan_note(ctx: _Context) -> dict[str, Any]:
    plan = _search_plan(ctx)
    if "learning_rate" in ctx.fixed or plan is None:
        return {"skipped": "fixed" if "learning_rate" in ctx.fixed else "budget"}
    return _search.plan_note(plan, ctx.left - _final_reserve(ctx))


def lr_search(ctx: _Context) -> Stage:
    """Short real runs of a few LRs around the range test's suggestion (rescaled to each batch), halved by
    successive halving (``_search.promote``); the winner is the best score at the longest rung reached."""
    searcher = ctx.searcher()
    note = searcher.run(lambda: _plan_note(ctx))  # the search is over: this only reads its plan
    if "skipped" in note:
        return _no_search(ctx, note["skipped"])
    study = searcher.study()
    searcher.close(study)
    best, score, rung = _search.best_candidate(study, ctx.task.higher_is_better)
    trials = _search.trial_records(study)
    return Stage("lr_search", _decision(best),
                 f"{len(trials)} short runs; lr {best.lr:.3g} at batch {best.batch} scored best ({score:.4g}) after "
                 f"{rung:,} samples and a cooldown", alternatives=trials,
                 evidence={"rungs": note["rungs"], "cooldown": note["cooldown"], "score": score,
                           "peak_disk_bytes": int(study.user_attrs.get("peak_disk", 0)),
                           "run_seconds": round(sum(float(t["seconds"]) for t in trials), 3)},
                 samples=_search.spent_in(study))


def _decision(cand: _search.Candidate) -> dict[str, Any]:
    return {"learning_rate": cand.lr, "micro_batch": cand.micro_batch, "accumulation": cand.accumulation,
            "warmup_ratio": cand.warmup_ratio}


def _scaled(ctx: _Context, target: int) -> float:
    return scaling.scale_lr(float(ctx.values["lr_found"]), ctx.task.batch_size, target, ctx.values["rule"])


def _no_search(ctx: _Context, reason: str) -> Stage:
    micro, k = ctx.values["splits"][0]
    lr = float(ctx.fixed["learning_rate"]) if reason == "fixed" else _scaled(ctx, micro * k)
    why = "learning_rate is fixed" if reason == "fixed" else \
        f"the budget left cannot pay for short runs: the range test's {lr:.3g} (rescaled to batch {micro * k}) is kept"
    warm = _warmup(ctx, lr) if reason != "fixed" and micro * k > ctx.task.batch_size else 0.0
    return Stage("lr_search", _decision(_search.Candidate(lr, micro, k, warm)), why, skipped=reason)


def _search_plan(ctx: _Context) -> _search.SearchPlan | None:
    if "learning_rate" in ctx.fixed:
        return None
    cands = []
    for i, (micro, k) in enumerate(ctx.values["splits"]):
        center = _scaled(ctx, micro * k)
        scale = center / float(ctx.values["lr_found"])  # the interval, rescaled to this batch like its suggestion
        floor = scale * float(ctx.values.get("lr_low", 0.0))
        if float(ctx.values.get("lr_confidence", 1.0)) < UNSURE:  # the curve cannot place the best LR in its
            center = math.sqrt(center * scale * float(ctx.values["lr_edge"]))  # interval: centre the runs in it
        grid = _search.lr_grid(center, scale * float(ctx.values["lr_edge"]), 5 if i == 0 else 3, floor)
        grew = micro * k > ctx.task.batch_size
        cands += [_search.Candidate(lr, micro, k, _warmup(ctx, lr) if grew else 0.0) for lr in grid]
    order = sorted(range(len(cands)), key=lambda j: j % 5 if j < 5 else j - 4.5)  # interleave the batches
    budget = ctx.left - _final_reserve(ctx)
    cooldown = _cooldown(ctx)
    rungs = _search.rungs_for(budget, len(cands), cooldown, max(c.batch for c in cands), longest=ctx.run_samples)
    if budget < rungs[0] * len(cands):
        return None
    return _search.SearchPlan(tuple(cands[j] for j in order), rungs, cooldown)


def _cooldown(ctx: _Context) -> float:
    """The cooldown scores a short run as the decaying run it predicts; a plan fixed to a constant LR is scored
    as it will train: at its constant LR."""
    return 0.0 if ctx.fixed.get("lr_scheduler_type") in ("constant", "constant_with_warmup") else ctx.cooldown


def _warmup(ctx: _Context, lr: float) -> float:
    """Warmup share for an LR above the one the range test found stable at the task's batch."""
    return scaling.warmup_ratio(lr / float(ctx.values["lr_found"]))


def _final_reserve(ctx: _Context) -> int:
    """Items kept for the last two stages — a run with early stopping, and one under a decaying schedule unless
    the schedule is fixed to a constant one — at most FINAL_SHARE of what is left, so the search gets a share.
    Where that share would cut both runs by more than a quarter of the task's epochs, it keeps one full run."""
    runs = 1 if ctx.fixed.get("lr_scheduler_type") in ("constant", "constant_with_warmup") else 2
    if "num_train_epochs" in ctx.fixed:
        return runs * ctx.train_items * int(ctx.fixed["num_train_epochs"])
    share = round(FINAL_SHARE * ctx.left)
    if runs == 2 and share < 2 * _least_epochs(ctx) * ctx.train_items:
        return min(ctx.run_samples, share)
    return min(runs * ctx.run_samples, share)


def _least_epochs(ctx: _Context) -> int:
    """The fewest epochs the early-stopping run may be cut to by the budget: three quarters of the task's."""
    return math.ceil(0.75 * ctx.task.epochs)
