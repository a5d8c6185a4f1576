"""tune's budget policy, in one place and in plain numbers (no torch): what one run costs, what each stage may
spend, and how the search and the trunk share what is left.

One unit of budget is one run of the task as written — its epochs over its training set, with a validation
pass per epoch — in wall time as measured (``state.Clock``), and in items. tune spends it in this order:

1. the clock (one validation pass and a few timed steps) and the range test (at most ``RANGE_SHARE``);
2. the batch stage, only where its trials cost at most ``BATCH_SHARE`` of what the search could have;
3. the trunk: the search's winner continued at its constant LR to the task's epochs, with cooldown branches
   that decay the LR over ``DECAY_SHARE`` of their length and are validated (``TrunkPlan``);
4. the search gets what is left after the trunk (``rung0``): candidates race over a first rung, the best
   third go on, and the one left is the start of the trunk, so its training is not done twice.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gradpilot import _validate
from gradpilot.errors import GradpilotError
from gradpilot.tuning.state import Clock

RANGE_SHARE = 0.15  # of the budget's seconds, at most this goes to the range test
MIN_RANGE_STEPS = 10  # the fewest steps a range test draws a curve from
BATCH_SHARE = 0.35  # of what the search could spend, at most this goes to the noise-scale and batch trials
BATCH_SLOWNESS = 10  # the batch trials take this many times a training item's seconds per item they read: small
# batches for the noise scale, one step per size with memory sampled (measured 5× on a MiniLM fine-tune, 30× on
# a tiny MLP, where per-call costs dominate)
DECAY_SHARE = 0.2  # a branch decays the LR over this share of its length (Hägele et al. 2024)
COOLDOWN = 0.2  # a search rung is scored after a cooldown of this share of it
MARGIN = 0.97  # plan to spend this share of the seconds: what plans round (a rung's last batch) takes the rest
ETA = 3  # successive halving keeps a third of the candidates at each rung
MAX_SEARCH_SHARE = 0.5  # no candidate trains more than half a run in the search: the trunk goes on from there
TIMING_STEPS = 2  # the fewest steps the clock times (after a first one, which warms caches up and is not counted)
TIMING_S = 0.1  # it times more, while they take less than this together
TIMING_SHARE = 0.05  # and are under this share of a run
COUNTED_TIMING_STEPS = 8  # under a budget in runs, the clock times this many (a count: the same at any load)


VALIDATION_SHARE = 1 / 3  # a validated item costs this share of a trained one: the forward of forward + backward
UNKNOWN_VALIDATION = 0.1  # a validation set of unknown size is counted as this share of the training set


def counted_clock(measured: Clock, val_items: int, train_items: int) -> Clock:
    """The clock a budget in runs decides by: counts, never seconds, so the same task, seed and budget plan alike
    on any machine at any load. One unit is one item trained; a validation pass costs ``VALIDATION_SHARE`` of its
    items; calls into the runner and checkpoints cost nothing here (what they really took is in the record)."""
    items = val_items if val_items > 0 else UNKNOWN_VALIDATION * train_items
    return Clock(item_seconds=1.0, validation_seconds=VALIDATION_SHARE * items, run_items=measured.run_items,
                 validations=measured.validations, start_metric=measured.start_metric, saves=measured.saves,
                 start_loss=measured.start_loss)


# Tests only: "ITEM_SECONDS,EVAL_SECONDS" recorded in place of the clock's measurement (which still runs) and
# charged in place of each stage's measured seconds, so that two tunes of one task plan alike.
FIXED_CLOCK = "GRADPILOT_TEST_CLOCK"


def fixed_clock() -> tuple[float, float] | None:
    value = os.environ.get(FIXED_CLOCK)
    if not value:
        return None
    item, evaluation = (float(x) for x in value.split(","))
    return item, evaluation


def steps_per_epoch(items: int, micro_batch: int, accumulation: int) -> int:
    """Optimizer steps in one epoch as the Hugging Face Trainer counts them (its dataloader keeps the last
    partial batch; a partial accumulation window still steps)."""
    return math.ceil(math.ceil(items / micro_batch) / accumulation)


def range_steps(run_items: int, batch: int, budget_seconds: float, step_seconds: float,
                room: float | None = None) -> int:
    """Range-test steps: a tenth of a run's steps, between 30 and 100, never more than ``RANGE_SHARE`` of the
    budget's seconds nor than the ``room`` (seconds) left once one full run of the trunk is set aside — on a
    short task a usual range test would otherwise take the epochs from the run it is for — and at least
    ``MIN_RANGE_STEPS``."""
    usual = max(30, min(100, round(0.1 * run_items / batch)))
    seconds = RANGE_SHARE * budget_seconds if room is None else min(RANGE_SHARE * budget_seconds, room)
    affordable = math.floor(seconds / max(step_seconds, 1e-9))
    return max(MIN_RANGE_STEPS, min(usual, affordable))


def branch_epochs(epochs: int) -> tuple[int, ...]:
    """Where the trunk branches, in whole epochs: after about a third, two thirds and all of the task's."""
    return tuple(sorted({max(1, round(epochs * f)) for f in (1 / 3, 2 / 3)} | {epochs}))


@dataclass(frozen=True)
class TrunkPlan:
    """The trunk's branches: each ends at ``epochs[k]`` epochs of ``steps_per_epoch`` optimizer steps, its last
    ``decay(k)`` steps decaying the LR. The trunk itself runs at its constant LR up to the last branch's start;
    every other branch is taken off it and thrown away once validated (its weights kept if it is the best)."""

    epochs: tuple[int, ...]
    steps_per_epoch: int
    decay_share: float = DECAY_SHARE

    def total(self, k: int) -> int:
        return self.steps_per_epoch * self.epochs[k]

    def decay(self, k: int) -> int:
        return max(1, round(self.decay_share * self.total(k))) if self.decay_share > 0 else 0

    def start(self, k: int) -> int:
        return self.total(k) - self.decay(k)

    def steps(self, from_step: int) -> int:
        """Optimizer steps the trunk and all its branches train, going on from ``from_step``."""
        return self.start(len(self.epochs) - 1) - from_step + sum(self.decay(k) for k in range(len(self.epochs)))

    def reachable(self, from_step: int) -> TrunkPlan:
        """The branches a trunk at ``from_step`` can still take (one that starts before it is gone); the last
        always stays."""
        kept = tuple(e for k, e in enumerate(self.epochs) if self.start(k) >= from_step or k == len(self.epochs) - 1)
        return TrunkPlan(kept, self.steps_per_epoch, self.decay_share)


@dataclass(frozen=True)
class Purse:
    """What the rest of the work may spend, in both units the budget holds in: seconds (by the clock: training
    items and validation passes) and items."""

    seconds: float
    items: float
    clock: Clock

    def pays(self, items: float, evals: float, calls: float = 0.0) -> bool:
        return items <= self.items and self.clock.seconds(items, evals, calls) <= self.seconds

    def less(self, items: float, evals: float, calls: float = 0.0) -> Purse:
        """What is left after spending ``items``, ``evals`` and ``calls``."""
        return Purse(self.seconds - self.clock.seconds(items, evals, calls), self.items - items, self.clock)


def trunk_cost(plan: TrunkPlan, from_step: int, batch: int) -> tuple[int, int, int]:
    """The trunk's items, validation passes and runner calls going on from ``from_step``: each branch is a call
    to train up to it, one to decay, and a validation."""
    return plan.steps(from_step) * batch, len(plan.epochs), 2 * len(plan.epochs)


def affordable_trunk(epochs: int, steps_per_epoch: int, batch: int, purse: Purse, *,
                     decay_share: float = DECAY_SHARE) -> TrunkPlan:
    """The trunk the purse pays for from the start: the task's epochs with its three branches; else with its last
    branch only; else fewer epochs (at least one: then the plan's last entry is under the task's epochs)."""
    plans = [TrunkPlan(branch_epochs(epochs), steps_per_epoch, decay_share)]
    plans += [TrunkPlan((e,), steps_per_epoch, decay_share) for e in range(epochs, 0, -1)]
    return next((p for p in plans if purse.pays(*trunk_cost(p, 0, batch))), plans[-1])


def survivors(candidates: int, rung: int) -> int:
    """How many of ``candidates`` reach rung ``rung`` (0: the first): a third go on at each rung — at least two to
    the second rung (a first rung is short: it favours whatever moves fastest early, often the largest LR that
    does not diverge, so the final choice is made between two, on a rung three times as long), and at least
    one after it."""
    least = min(2, candidates) if rung == 1 else 1
    return max(least, candidates // int(ETA**rung))


def rung_count(candidates: int) -> int:
    """Rungs until one candidate is left: 3, 5 or 8 candidates race two (the best two, or three, of the first
    go on; the best at the second goes on as the trunk), 27 three."""
    count = 1
    while survivors(candidates, count) > 1:
        count += 1
    return count


@dataclass(frozen=True)
class SearchCost:
    """The search's items and validation passes for a first rung of ``r0`` items, and what its winner has
    trained when the trunk takes over (those items are not trained again)."""

    items: int
    evals: int
    winner_items: int

    @property
    def calls(self) -> int:
        """Runner calls: each scored stretch is one to train and one to decay (its validation counted apart)."""
        return 2 * self.evals


def search_cost(r0: int, batches: Sequence[int], cooldown: float, rungs: int | None = None) -> SearchCost:
    """Successive halving with rungs r0, 3·r0, ...: each candidate (``batches``: each one's batch) alive at
    rung k trains on to it and is scored after a cooldown of ``cooldown`` × its steps (at least one), each
    stretch in whole steps. Who goes on past the first rung is not known yet: the largest batches are counted,
    so the cost is never under what the search spends."""
    widest = sorted(batches, reverse=True)
    items = evals = 0
    done = [0] * len(widest)  # each candidate's steps so far
    rungs = rung_count(len(batches)) if rungs is None else rungs
    for k in range(rungs):
        rung = r0 * ETA**k
        for i, b in enumerate(widest[:survivors(len(batches), k)]):
            to = math.ceil(rung / b)
            items += (to - done[i] + cooldown_steps(to, cooldown)) * b
            done[i] = to
        evals += survivors(len(batches), k)
    return SearchCost(items, evals, r0 * ETA ** (rungs - 1))


def cooldown_steps(to_step: int, cooldown: float) -> int:
    """The steps a run at ``to_step`` decays over before it is scored (none where the share is 0)."""
    return max(1, round(cooldown * to_step)) if cooldown > 0 else 0


def rung0(purse: Purse, batches: Sequence[int], cooldown: float, trunk: TrunkPlan, *,
          run_items: int, reuse: bool = True, rungs: int | None = None) -> int | None:
    """The longest first rung (items, whole batches) such that the search — ``rungs`` of it (by default to the
    last two) — and then the trunk, going on from the winner (from the start where it cannot: ``reuse``
    False), fit the purse; no candidate trains more than half a
    run (on a run so short that the least rung worth racing is more, that least). A winner past one of the
    trunk's branches goes on without it (a longer race is worth more than the earliest branch), and the cost
    counts the branches left. None where even the shortest rung worth running (``least_rung``) does not fit."""
    batch = max(batches)
    least = least_rung(batch, run_items)
    rungs = rung_count(len(batches)) if rungs is None else rungs
    last = ETA ** (rungs - 1)
    most = max(least, MAX_SEARCH_SHARE * run_items / last)  # a run so short that half of it is under the least

    def fits(r0: int) -> bool:
        cost = search_cost(r0, batches, cooldown, rungs)
        at = cost.winner_items // batch if reuse else 0
        items, evals, calls = trunk_cost(trunk.reachable(at), at, batch)
        return purse.pays(cost.items + items, cost.evals + evals, cost.calls + calls)

    if not fits(least):
        return None
    low, high = least // batch, max(least // batch, int(most // batch))
    while low < high:  # the cost grows with the rung: bisect on whole batches
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle * batch) else (low, middle - 1)
    return low * batch


def least_rung(batch: int, run_items: int) -> int:
    """The shortest first rung worth racing candidates on: 4 steps and 2% of a run, in whole batches."""
    return batch * max(4, math.ceil(0.02 * run_items / batch))


def search_candidates(counts: Sequence[int]) -> list[int]:
    """How many candidates to try, most first, where ``counts`` are the candidates per batch: all of them, the
    first batch's only, then three of those."""
    options = [sum(counts), counts[0], min(3, counts[0])]
    return sorted(set(options), reverse=True)


_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(value: float | str) -> float:
    """Seconds from ``90``, ``"90s"``, ``"30m"``, ``"1.5h"``; anything else is refused in one line."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _validate.positive_float("time_budget", float(value))
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h)?\s*", str(value))
    if match is None:
        raise GradpilotError(f"time_budget must be seconds or a duration such as 90s, 30m or 2h, got {value!r}")
    return _validate.positive_float("time_budget", float(match.group(1)) * _UNITS[match.group(2) or "s"])
