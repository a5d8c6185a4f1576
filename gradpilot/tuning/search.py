"""The LR search stage: a few LRs around the range test's suggestion (rescaled to each batch), raced by
successive halving (``halving``) over short real runs at a constant LR, each scored after a cooldown. The
winner is not restarted: its run is where the trunk goes on from (``trunk``), so the search and the trunk are
planned together, against one purse (``budget.rung0``).

A short run at a constant LR favours an LR that is too small: it is judged before a larger LR's noise has been
annealed away. So each rung is scored after a brief cooldown — a branch that decays the LR over ``cooldown``
× the run so far, is validated, and is thrown away (Hägele et al. 2024).
"""

from __future__ import annotations

import math
from typing import Any

from gradpilot import scaling
from gradpilot.train.seam import Cost
from gradpilot.tuning import budget
from gradpilot.tuning.context import Context
from gradpilot.tuning.halving import Candidate, Halving, Plan, best, seconds_in, spent_in, trial_records
from gradpilot.tuning.state import Batches, Chosen, RangeTest, Splits, Stage

CONSTANT = ("constant", "constant_with_warmup")
FRESH = ("linear", "cosine_with_min_lr")  # fixed schedules that decay from the start: the trunk cannot go on


def lr_grid(center: float, ceiling: float, points: int = 5, floor: float = 0.0) -> list[float]:
    """``points`` LRs half a decade apart around ``center``, none above ``ceiling`` and, where they fit below it,
    none below ``floor``: center first, then its neighbours outwards, so the promising ones run first."""
    half = (points - 1) // 2
    grid = [center * 10 ** (k / 2) for k in range(-half, points - half)]
    while grid[-1] > ceiling * 1.0001 and grid[0] > center / 1e3:
        grid = [lr / math.sqrt(10) for lr in grid]  # slide below the edge rather than lose candidates
    while grid[0] < floor / 1.0001 and grid[-1] * math.sqrt(10) <= ceiling * 1.0001:
        grid = [lr * math.sqrt(10) for lr in grid]  # and up into the range the curve supports
    return sorted(grid, key=lambda lr: (abs(math.log10(lr / center)), -lr))


def searcher(ctx: Context) -> Halving:
    return Halving(ctx.storage, ctx.prefix, ctx.task, ctx.initial, seed=ctx.seed, folder=ctx.out / "runs" / "search",
                   progress=ctx.say, wait=ctx.wait, on_ray=ctx.on_ray, ray_address=ctx.ray_address)


def search(ctx: Context) -> None:
    """Every worker's part in the search: the first to arrive plans it (or says why there is none), then all
    take the short runs, rung by rung, until the last rung's queue is empty."""
    searcher(ctx).run(lambda: _plan_note(ctx))


def lr_search(ctx: Context) -> Stage:
    """The search's outcome, once every worker's short runs are done: the winner (best score at the longest
    rung reached), whose run the trunk goes on from."""
    halving = searcher(ctx)
    note = halving.run(lambda: _plan_note(ctx))  # the search is over: this only reads its plan
    trunk = tuple(int(e) for e in note["trunk"])
    if "skipped" in note:
        return _no_search(ctx, note["skipped"], trunk)
    study = halving.study()
    plan = Plan.read(note)
    trial, score, rung = best(study, ctx.task.higher_is_better)
    halving.close(study, trial.number)
    cand = plan.candidates[int(trial.user_attrs["index"])]
    keeps = not note.get("fresh")
    trials = trial_records(study)
    parts = seconds_in(study)
    goes_on = "; the trunk goes on from its run" if keeps else ""
    return Stage("lr_search", _chosen(cand, trial.number if keeps else None, trunk),
                 f"{len(trials)} short runs; lr {cand.lr:.3g} at batch {cand.batch} scored best ({score:.4g}) after "
                 f"{rung:,} items and a cooldown{goes_on}", alternatives=trials,
                 evidence={"rungs": list(plan.rungs), "cooldown": plan.cooldown, "score": score,
                           "peak_disk_bytes": int(study.user_attrs.get("peak_disk", 0)),
                           "run_seconds": round(sum(float(t["seconds"]) for t in trials), 3)},
                 spent=Cost(spent_in(study), parts["training"], parts["validation"], parts["io"], 0.0,
                            int(parts["validations"])))


def _chosen(cand: Candidate, trial: int | None, trunk: tuple[int, ...]) -> Chosen:
    return Chosen(cand.lr, cand.micro_batch, cand.accumulation, cand.warmup_steps, trial, trunk)


def _no_search(ctx: Context, reason: str, trunk: tuple[int, ...]) -> Stage:
    micro, k = _splits(ctx)[0]
    fixed = reason == "fixed"
    lr = float(ctx.fixed["learning_rate"]) if fixed else _center(ctx, micro, k)
    sure = fixed or _range(ctx).lr_confidence >= UNSURE
    where = "its suggestion" if sure else "between its suggestion and its edge, as the search would centre its runs"
    why = "learning_rate is fixed" if fixed else (f"the budget left cannot pay for short runs: the range test's LR "
                                                  f"is kept, {where} ({lr:.3g} at batch {micro * k})")
    warm = _warmup_steps(ctx, lr, micro, k) if not fixed and micro * k > ctx.task.batch_size else 0
    return Stage("lr_search", _chosen(Candidate(lr, micro, k, warm), None, trunk), why, skipped=reason)


def _splits(ctx: Context) -> tuple[tuple[int, int], ...]:
    splits: Splits = ctx.decided.need("accumulation")
    return splits.splits


def _range(ctx: Context) -> RangeTest:
    found: RangeTest = ctx.decided.need("lr_range")
    return found


def _scaled(ctx: Context, target: int) -> float:
    batches: Batches = ctx.decided.need("batch")
    return scaling.scale_lr(_range(ctx).lr_found, ctx.task.batch_size, target, batches.rule)


def _plan_note(ctx: Context) -> dict[str, Any]:
    """The search and the trunk planned together: the most candidates (and the longest first rung) the purse
    pays for with the trunk after them — the trunk with its three branches, else with its last only; or, with
    no search, the trunk alone and why there is none."""
    trunk = _trunk(ctx)
    if "learning_rate" in ctx.fixed:
        return {"skipped": "fixed", "trunk": list(trunk.epochs)}
    fresh = ctx.fixed.get("lr_scheduler_type") in FRESH
    cooldown = 0.0 if ctx.fixed.get("lr_scheduler_type") in CONSTANT else ctx.cooldown
    counts = [5] + [3] * (len(_splits(ctx)) - 1)
    for plan in (trunk, budget.TrunkPlan(trunk.epochs[-1:], trunk.steps_per_epoch, trunk.decay_share)):
        for count in budget.search_candidates(counts):
            cands = _candidates(ctx, count)
            for rungs in sorted({budget.rung_count(count), 1}, reverse=True):  # a final between two, else none
                r0 = budget.rung0(ctx.purse(), [c.batch for c in cands], cooldown, plan, run_items=ctx.run_items,
                                  reuse=not fresh, rungs=rungs)
                if r0 is not None:
                    return _note(cands, r0, rungs, cooldown, plan, fresh)
    return {"skipped": "budget", "trunk": list(trunk.epochs)}


def _note(cands: list[Candidate], r0: int, count: int, cooldown: float, trunk: budget.TrunkPlan,
          fresh: bool) -> dict[str, Any]:
    """The plan's note, the warmups held to half the first rung (a run is scored after its warmup)."""
    rungs = tuple(r0 * budget.ETA**k for k in range(count))
    cands = [Candidate(c.lr, c.micro_batch, c.accumulation, min(c.warmup_steps, r0 // c.batch // 2)) for c in cands]
    cost = budget.search_cost(r0, [c.batch for c in cands], cooldown, count)
    reached = trunk.reachable(0 if fresh else cost.winner_items // max(c.batch for c in cands))
    return {**Plan(tuple(cands), rungs, cooldown, cost.items).note(), "trunk": list(reached.epochs), "fresh": fresh}


def _trunk(ctx: Context) -> budget.TrunkPlan:
    """The trunk the purse pays for (fixed epochs train as fixed, with one branch at their end)."""
    micro, k = _splits(ctx)[0]
    per_epoch = budget.steps_per_epoch(ctx.train_items, micro, k)
    share = 0.0 if ctx.fixed.get("lr_scheduler_type") in CONSTANT else budget.DECAY_SHARE
    if "num_train_epochs" in ctx.fixed:
        return budget.TrunkPlan((int(ctx.fixed["num_train_epochs"]),), per_epoch, share)
    return budget.affordable_trunk(ctx.task.epochs, per_epoch, micro * k, ctx.purse(), decay_share=share)


def _candidates(ctx: Context, count: int) -> list[Candidate]:
    """``count`` candidates: five LRs half a decade apart at the first batch (three where ``count`` is 3), three
    at the other, each inside the interval the range test supports rescaled to its batch, the batches
    interleaved so the promising ones run first."""
    found, cands = _range(ctx), []
    splits = _splits(ctx) if count > 5 else _splits(ctx)[:1]
    for i, (micro, k) in enumerate(splits):
        center = _center(ctx, micro, k)
        scale = _scaled(ctx, micro * k) / found.lr_found  # the interval, rescaled to this batch like its suggestion
        points = min(count, 5) if i == 0 else 3
        grid = lr_grid(center, scale * found.lr_edge, points, scale * found.lr_low)
        grew = micro * k > ctx.task.batch_size
        cands += [Candidate(lr, micro, k, _warmup_steps(ctx, lr, micro, k) if grew else 0) for lr in grid]
    order = sorted(range(len(cands)), key=lambda j: j % 5 if j < 5 else j - 4.5)  # interleave the batches
    return [cands[j] for j in order]


UNSURE = 0.5  # a range test less confident than this leaves the search centred between its pick and its edge


def _center(ctx: Context, micro: int, k: int) -> float:
    """The LR the search centres on at this batch: the range test's suggestion rescaled to it; where the test
    is unsure (the curve cannot place the best LR in its interval), between the suggestion and the edge."""
    found = _range(ctx)
    center = _scaled(ctx, micro * k)
    if found.lr_confidence < UNSURE:
        center = math.sqrt(center * center / found.lr_found * found.lr_edge)
    return center


def _warmup_steps(ctx: Context, lr: float, micro: int, k: int) -> int:
    """Warmup, in optimizer steps of a run at this batch, for an LR above the one the range test found stable
    at the task's batch: a share of the run that grows with the jump (``scaling.warmup_ratio``)."""
    ratio = scaling.warmup_ratio(lr / _range(ctx).lr_found)
    return math.ceil(ratio * budget.steps_per_epoch(ctx.train_items, micro, k) * ctx.task.epochs)
