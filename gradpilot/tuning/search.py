"""The LR search stage: a few LRs around the range test's suggestion (rescaled to each batch), raced by
successive halving (``halving``) over short real runs at a constant LR, each scored after a cooldown. The
winner is not restarted: its run is where the trunk goes on from (``trunk``), so the search and the trunk are
planned together, against one purse (``budget.rung0``) — unless every finalist overfit within the search: then
the trunk starts afresh at the LR corrected for the full run's length (``horizon``).

In three steps, each once or by every worker: the first worker to arrive plans the search (``planned``, kept in
the storage for the others); every worker races its rungs (``race``); the one that takes the stage decides
(``decide``) from the scores the race recorded.

A short run at a constant LR favours an LR that is too small: it is judged before a larger LR's noise has been
annealed away. So each rung is scored after a brief cooldown — a branch that decays the LR over ``cooldown``
× the run so far, is validated, and is thrown away (Hägele et al. 2024).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from gradpilot import scaling
from gradpilot.errors import GradpilotError
from gradpilot.train.seam import Cost
from gradpilot.tuning import budget, horizon, queue
from gradpilot.tuning.context import SoFar
from gradpilot.tuning.halving import Candidate, Halving, Plan, best, remove, seconds_in, spent_in, trial_records
from gradpilot.tuning.state import Batches, Chosen, Overtrained, RangeTest, SearchSeen, Splits, Stage, TrialRecord

UNSURE = 0.5  # a range test less confident than this leaves the search centred between its pick and its edge


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


def planned(now: SoFar) -> dict[str, Any]:
    """The search's plan (``Plan.note``, with the trunk's branches), made by the first worker to ask and read
    back by the others: ``{"skipped": why, "trunk": ...}`` where there is no search."""
    ctx = now.ctx
    return queue.once(ctx.storage, f"{ctx.prefix}:lr_search:plan", lambda: _plan_note(now), ctx.wait)


def race(now: SoFar) -> None:
    """Every worker's part in the search: the short runs, rung by rung, until the last rung's queue is empty."""
    note = planned(now)
    if "skipped" not in note:
        _halving(now).race(Plan.read(note))


def decide(now: SoFar) -> Stage:
    """The search's outcome, once the race is over: the winner (best score at the longest rung reached), whose
    run the trunk goes on from."""
    note = planned(now)
    trunk = tuple(int(e) for e in note["trunk"])
    if "skipped" in note:
        return _no_search(now, note["skipped"], trunk)
    halving = _halving(now)
    study = halving.study()
    plan = Plan.read(note)
    trial, score, rung = best(study, now.ctx.task.higher_is_better)
    trials = tuple(trial_records(study))
    if math.isnan(score):
        raise GradpilotError(_all_broke(trials))
    halving.close(study, trial.number)
    cand = plan.candidates[int(trial.user_attrs["index"])]
    keeps = not note.get("fresh")
    parts = seconds_in(study)
    spent = Cost(spent_in(study), parts["training"], parts["validation"], parts["io"], 0.0, int(parts["validations"]))
    over = horizon.overtrained(trials, plan.rungs, plan.cooldown, now.ctx.task.higher_is_better)
    goes_on = "; the trunk goes on from its run" if keeps and over is None else ""
    goes_on += _broke(trials)
    seen = SearchSeen(plan.rungs, plan.cooldown, score, int(study.user_attrs.get("peak_disk", 0)),
                      round(sum(t.seconds for t in trials), 3), tuple(trials), over)
    why = (f"{len(trials)} short runs; lr {cand.lr:.3g} at batch {cand.batch} scored best ({score:.4g}) after "
           f"{rung:,} items and a cooldown{goes_on}")
    chosen = _chosen(cand, trial.number if keeps else None, trunk)
    if over is not None:
        remove(now.ctx.folder.trial(trial.number))  # the trunk starts afresh: nothing goes on from this run
        chosen, why = _afresh(dataclasses.replace(now, spent=now.spent + spent), chosen, over, why)
    return Stage("lr_search", chosen, why, seen, spent=spent)


def _afresh(now: SoFar, chosen: Chosen, over: Overtrained, raced: str) -> tuple[Chosen, str]:
    """The winner overfit within the search: the trunk starts from the initial weights, over the epochs the purse
    left pays for, at the LR that trains them as far as the best short run got (``horizon``)."""
    ctx = now.ctx
    branches = (ctx.fixed.epochs or ctx.task.epochs,) if ctx.fixed.fresh else _trunk(now).epochs
    horizon_items = branches[-1] * ctx.train_items
    lr = horizon.corrected(over.lr, over.best_items, horizon_items)
    scores = ", ".join(f"{lr_:.3g}: {a:.4g} → {b:.4g}" for lr_, a, b in over.finalists)
    why = (f"{raced}. But every finalist validated worse at the last rung than at the one before (lr: {scores}): "
           f"at these LRs the task overfits within {over.best_items:,} items, so the trunk starts afresh at lr "
           f"{lr:.3g} = {over.lr:.3g} × {over.best_items:,} / {horizon_items:,} items (the same LR × items, over "
           f"{branches[-1]} epochs; the best LR falls as the run grows longer)")
    return dataclasses.replace(chosen, learning_rate=lr, trial=None, branches=branches), why


def _broken(trials: tuple[TrialRecord, ...]) -> list[TrialRecord]:
    return [t for t in trials if any(math.isnan(v) for v in t.scores.values())]


def _broke(trials: tuple[TrialRecord, ...]) -> str:
    """Words for the candidates whose model broke (NaN or inf on validation): dropped, never continued."""
    broken = _broken(trials)
    if not broken:
        return ""
    lrs = ", ".join(f"{t.lr:.3g}" for t in sorted(broken, key=lambda t: t.lr))
    return f"; {len(broken)} broke (NaN or inf on validation) and were dropped: lr {lrs}"


def _all_broke(trials: tuple[TrialRecord, ...]) -> str:
    lrs = sorted(t.lr for t in trials)
    return (f"every LR the search tried ({lrs[0]:.3g} to {lrs[-1]:.3g}) gave a model whose validation loss or "
            "metric is NaN or inf, so there is nothing to plan: check the data, the loss and Task.metric, or fix a "
            "lower learning_rate with --fix")


def _halving(now: SoFar) -> Halving:
    """The search of the tune standing at ``now``, its short runs on the context's backend (None: the queue)."""
    ctx = now.ctx
    return Halving(ctx.storage, ctx.prefix, ctx.task, ctx.initial, seed=ctx.seed, folder=ctx.folder,
                   progress=now.say, wait=ctx.wait, backend=ctx.backend)


def _chosen(cand: Candidate, trial: int | None, trunk: tuple[int, ...]) -> Chosen:
    return Chosen(cand.lr, cand.micro_batch, cand.accumulation, cand.warmup_steps, trial, trunk)


def _no_search(now: SoFar, reason: str, trunk: tuple[int, ...]) -> Stage:
    micro, k = _splits(now)[0]
    fixed = reason == "fixed"
    lr = float(now.ctx.fixed.learning_rate or 0.0) if fixed else _center(now, micro, k)
    sure = fixed or _range(now).confidence >= UNSURE
    where = "its suggestion" if sure else "between its suggestion and its edge, as the search would centre its runs"
    why = "learning_rate is fixed" if fixed else (f"the budget left cannot pay for short runs: the range test's LR "
                                                  f"is kept, {where} ({lr:.3g} at batch {micro * k})")
    warm = _warmup_steps(now, lr, micro, k) if not fixed and micro * k > now.ctx.task.batch else 0
    return Stage("lr_search", _chosen(Candidate(lr, micro, k, warm), None, trunk), why, skipped=reason)


def _splits(now: SoFar) -> tuple[tuple[int, int], ...]:
    splits: Splits = now.decided.need("accumulation")
    return splits.splits


def _range(now: SoFar) -> RangeTest:
    found: RangeTest = now.decided.need("lr_range")
    return found


def _scaled(now: SoFar, target: int) -> float:
    batches: Batches = now.decided.need("batch")
    return scaling.scale_lr(_range(now).suggestion, now.ctx.task.batch, target, batches.rule)


def _plan_note(now: SoFar) -> dict[str, Any]:
    """The search and the trunk planned together: the most candidates (and the longest first rung) the purse
    pays for with the trunk after them — the trunk with its three branches, else with its last only; or, with
    no search, the trunk alone and why there is none."""
    ctx = now.ctx
    trunk = _trunk(now)
    if ctx.fixed.learning_rate is not None:
        return {"skipped": "fixed", "trunk": list(trunk.epochs)}
    cooldown = 0.0 if ctx.fixed.constant else ctx.cooldown
    counts = [5] + [3] * (len(_splits(now)) - 1)
    for plan in (trunk, budget.TrunkPlan(trunk.epochs[-1:], trunk.steps_per_epoch, trunk.decay_share)):
        for count in budget.search_candidates(counts):
            for cands, edges in _with_and_without_reserves(now, _candidates(now, count)):
                batches = [c.batch for c in cands[: len(cands) - len(edges)]]
                batches += [cands[-1].batch] if edges else []  # one reserve at most runs
                for rungs in sorted({budget.rung_count(count), 1}, reverse=True):  # a final between two, else none
                    r0 = budget.rung0(now.purse(), batches, cooldown, plan, run_items=ctx.run_items,
                                      reuse=not ctx.fixed.fresh, rungs=rungs)
                    if r0 is not None:
                        return _note(Plan(tuple(cands), (r0,), cooldown, 0, edges), batches, rungs, plan,
                                     ctx.fixed.fresh)
    return {"skipped": "budget", "trunk": list(trunk.epochs)}


def _with_and_without_reserves(now: SoFar, cands: list[Candidate]
                               ) -> list[tuple[list[Candidate], tuple[tuple[int, int], ...]]]:
    """The candidates with their reserves, then without (where the budget cannot pay for a reserve)."""
    more, edges = _reserves(now, cands)
    return [(more, edges), (cands, ())] if edges else [(cands, ())]


def _reserves(now: SoFar, cands: list[Candidate]) -> tuple[list[Candidate], tuple[tuple[int, int], ...]]:
    """The candidates, and a reserve half a decade past each edge of the first batch's LRs (the top one never past
    where the range test's loss broke: at that LR where it is nearer, none where it is within a quarter decade):
    it races only where the first rung's best is that edge — the search leaves its bracket; one reserve at most
    runs, and the plan pays for it."""
    first = [i for i, c in enumerate(cands) if (c.micro_batch, c.accumulation) == _splits(now)[0]]
    if len(first) < 3:
        return cands, ()
    low, high = min(first, key=lambda i: cands[i].lr), max(first, key=lambda i: cands[i].lr)
    ceiling = _scaled(now, cands[high].batch) / _range(now).suggestion * _range(now).high  # where the curve broke
    past = [(low, dataclasses.replace(cands[low], lr=cands[low].lr / math.sqrt(10)))]
    top = above(cands[high].lr, ceiling)
    if top is not None:
        past.append((high, dataclasses.replace(cands[high], lr=top)))
    return cands + [c for _, c in past], tuple((edge, len(cands) + j) for j, (edge, _) in enumerate(past))


def above(lr: float, ceiling: float) -> float | None:
    """The reserve above the highest LR tried: half a decade up, but never past ``ceiling`` (where the range
    test's loss broke) — at it where it is nearer; None where it is within a quarter decade."""
    top = min(lr * math.sqrt(10), ceiling)
    return top if top >= lr * 10**0.25 else None


def _note(plan: Plan, batches: list[int], count: int, trunk: budget.TrunkPlan, fresh: bool) -> dict[str, Any]:
    """The plan's note (``plan``'s first rung ``r0``, ``count`` rungs; ``batches``: what the search may train,
    a reserve included), the warmups held to half the first rung (a run is scored after its warmup)."""
    r0, cooldown = plan.rungs[0], plan.cooldown
    rungs = tuple(r0 * budget.ETA**k for k in range(count))
    cands = [Candidate(c.lr, c.micro_batch, c.accumulation, min(c.warmup_steps, r0 // c.batch // 2))
             for c in plan.candidates]
    cost = budget.search_cost(r0, batches, cooldown, count)
    reached = trunk.reachable(0 if fresh else cost.winner_items // max(batches))
    note = Plan(tuple(cands), rungs, cooldown, cost.items, plan.edges).note()
    return {**note, "trunk": list(reached.epochs), "fresh": fresh}


def _trunk(now: SoFar) -> budget.TrunkPlan:
    """The trunk the purse pays for (fixed epochs train as fixed, with one branch at their end)."""
    ctx = now.ctx
    micro, k = _splits(now)[0]
    per_epoch = budget.steps_per_epoch(ctx.train_items, micro, k)
    share = 0.0 if ctx.fixed.constant else budget.DECAY_SHARE
    if ctx.fixed.epochs is not None:
        return budget.TrunkPlan((ctx.fixed.epochs,), per_epoch, share)
    return budget.affordable_trunk(ctx.task.epochs, per_epoch, micro * k, now.purse(), decay_share=share)


def _candidates(now: SoFar, count: int) -> list[Candidate]:
    """``count`` candidates: five LRs half a decade apart at the first batch (three where ``count`` is 3), three
    at the other, each inside the interval the range test supports rescaled to its batch, the batches
    interleaved so the promising ones run first."""
    found, cands = _range(now), []
    splits = _splits(now) if count > 5 else _splits(now)[:1]
    for i, (micro, k) in enumerate(splits):
        center = _center(now, micro, k)
        scale = _scaled(now, micro * k) / found.suggestion  # the interval, rescaled to this batch like its pick
        points = min(count, 5) if i == 0 else 3
        grid = lr_grid(center, scale * found.high, points, scale * found.low)
        grew = micro * k > now.ctx.task.batch
        cands += [Candidate(lr, micro, k, _warmup_steps(now, lr, micro, k) if grew else 0) for lr in grid]
    order = sorted(range(len(cands)), key=lambda j: j % 5 if j < 5 else j - 4.5)  # interleave the batches
    return [cands[j] for j in order]


def _center(now: SoFar, micro: int, k: int) -> float:
    """The LR the search centres on at this batch: the range test's suggestion rescaled to it; where the test
    is unsure (the curve cannot place the best LR in its interval), between the suggestion and the edge."""
    found = _range(now)
    center = _scaled(now, micro * k)
    if found.confidence < UNSURE:
        center = math.sqrt(center * center / found.suggestion * found.high)
    return center


def _warmup_steps(now: SoFar, lr: float, micro: int, k: int) -> int:
    """Warmup, in optimizer steps of a run at this batch, for an LR above the one the range test found stable
    at the task's batch: a share of the run that grows with the jump (``scaling.warmup_ratio``)."""
    ctx = now.ctx
    ratio = scaling.warmup_ratio(lr / _range(now).suggestion)
    return math.ceil(ratio * budget.steps_per_epoch(ctx.train_items, micro, k) * ctx.task.epochs)
