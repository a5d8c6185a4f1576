"""``tune``'s first stages, in the order they run; each is ``(now: SoFar) -> Stage`` and builds on a gradpilot tool:
the clock (one run's cost, measured), ``find_lr``, ``estimate_noise_scale`` + ``find_batch_size``,
``scaling.plan``. The search is in ``gradpilot.tuning.search``, the trunk in ``gradpilot.tuning.trunk``."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings

import torch
from torch.utils.data import DataLoader

from gradpilot import scaling
from gradpilot.batch.finder import estimate_noise_scale, find_batch_size
from gradpilot.batch.results import BatchSizeResult
from gradpilot.errors import GradpilotError
from gradpilot.lr.range_test import find_lr
from gradpilot.train import run as runner
from gradpilot.train.seam import Cost, Run, Setting
from gradpilot.train.state import load_weights
from gradpilot.train.task import Task
from gradpilot.tuning import budget
from gradpilot.tuning.context import Context, SoFar
from gradpilot.tuning.halving import remove
from gradpilot.tuning.state import Batches, BatchSeen, Clock, ClockSeen, CurveSeen, RangeTest, Splits, SplitsSeen, Stage


def check_budget(ctx: Context) -> None:
    """Refuse, before any work, a budget that cannot pay for the range test and one epoch (or for fixed
    epochs), and a training set too small to tune on at all. A time budget is checked once the clock ran."""
    fixed_batch = (ctx.fixed.batch_size or 0) * (ctx.fixed.accumulation or 1)
    if fixed_batch > ctx.train_items:
        raise GradpilotError(f"the fixed batch ({fixed_batch}) is larger than the training set ({ctx.train_items} "
                             "items): one step would see every item; fix a batch of at most the training set")
    if ctx.train_items < ctx.task.batch_size:
        raise GradpilotError(f"the training set has {ctx.train_items} items, fewer than one batch of "
                             f"{ctx.task.batch_size}: give more data, or a smaller Task.batch_size")
    if ctx.budget.runs is not None:
        _check_runs(ctx, ctx.budget.runs, "")


def _least_runs(ctx: Context) -> float:
    """The fewest runs a tune can be done in: one epoch (or the fixed epochs) and the shortest range test."""
    need = ctx.train_items * (ctx.fixed.epochs or 1)
    if ctx.fixed.learning_rate is None:
        need += budget.MIN_RANGE_STEPS * ctx.task.batch
    return need / ctx.run_items


def _check_runs(ctx: Context, runs: float, unit: str) -> None:
    least = _least_runs(ctx)
    if runs < least:
        given = f"budget {runs:g} runs" if not unit else \
            f"time budget {ctx.budget.seconds:g} s ({runs:.2f} runs {unit})"
        raise GradpilotError(f"{given} is too small: the range test and the epochs it must train cost {least:.2f} "
                             f"runs; give a budget of at least {math.ceil(100 * least) / 100:g} runs")


def clock(now: SoFar) -> Stage:
    """What one run of the task costs, measured through the runner that trains its runs (the user's trainer, or
    gradpilot's loop): a validation pass of the initial weights, one step to warm up, one step in a call of its
    own and a few more in another — the difference between the two calls is the steps' cost, what is left of
    the first the call's own."""
    ctx = now.ctx
    task, batch = ctx.task, ctx.task.batch
    now.say("timing one validation pass and a few steps")
    run = runner.start(task, Setting(task.lr, task.batch_size, task.accumulation), seed=ctx.seed, weights=ctx.initial,
                       folder=ctx.folder.clock)
    start = run.evaluate()
    run.advance(1)
    one = _timed(run, 2)
    more, steps = _longer_call(ctx, run, one, counted=now.counted)
    step = max(1e-9, (more - one) / max(1, steps - 1))
    item, validation = budget.fixed_clock() or (step / batch, run.cost.validation)
    call = 0.0 if budget.fixed_clock() else max(0.0, one - step)
    saving = _save_seconds(run, ctx) if task.cadence.saves else 0.0
    load_weights(task.model, ctx.initial)
    remove(ctx.folder.clock)
    validations = task.cadence.validations if task.cadence.validations is not None else task.epochs
    measured = Clock(item_seconds=item, validation_seconds=validation, run_items=ctx.run_items,
                     validations=validations, start_metric=start.value, call_seconds=call, saves=task.cadence.saves,
                     save_seconds=saving, start_loss=start.loss)
    timed = now.with_clock(measured)
    if ctx.budget.runs is None:
        _check_runs(ctx, timed.budget_runs, "of this task")
    calls = f", {measured.call_seconds:.2g} s per call into the trainer" if measured.call_seconds > 1e-3 else ""
    why = (f"one run of the task ({task.epochs} epochs over {ctx.train_items:,} items, a validation each epoch) "
           f"takes about {_duration(measured.run_seconds)}: {1e3 * measured.item_seconds:.3g} ms per item trained, "
           f"{_duration(measured.validation_seconds)} per validation{calls}; the budget is {timed.budget_runs:.3g} "
           f"runs ({_duration(timed.budget_runs * measured.run_seconds)}" +
           (", held in items and validations: the same plan at any load)" if timed.counted else ")"))
    seen = ClockSeen(measured.run_seconds, timed.budget_runs * measured.run_seconds, timed.budget_runs)
    return Stage("clock", measured, why, seen, spent=run.cost)


def _longer_call(ctx: Context, run: Run, one: float, *, counted: bool = False) -> tuple[float, int]:
    """A call of more steps than the first, timed: at least TIMING_STEPS, and four times as many again while its
    steps do not stand out of a call's own cost (they take less than the one-step call did), up to TIMING_SHARE
    of a run (or TIMING_S of steps where a step is quick). Its seconds and its steps. Where the budget is
    counted, a fixed ``COUNTED_TIMING_STEPS`` (within TIMING_SHARE): the items tune spends never hang on the
    machine's speed."""
    most = max(budget.TIMING_STEPS, math.ceil(budget.TIMING_SHARE * ctx.run_items / ctx.task.batch))
    if counted:
        steps = min(most, budget.COUNTED_TIMING_STEPS)
        return _timed(run, run.steps + steps), steps
    steps = min(most, max(budget.TIMING_STEPS, math.ceil(budget.TIMING_S / max(one, 1e-9))))
    while True:
        more = _timed(run, run.steps + steps)
        if more - one >= one or steps >= most:
            return more, steps
        steps = min(most, 4 * steps)


def _save_seconds(run: Run, ctx: Context) -> float:
    """One checkpoint save of the run, timed: the user's trainer saves this often in one of its runs."""
    before = run.cost.io
    run.save(ctx.folder.clock / "save")
    return run.cost.io - before


def _timed(run: Run, to_step: int) -> float:
    """The seconds one call training ``run`` on to ``to_step`` takes."""
    before = run.cost.training
    run.advance(to_step)
    return run.cost.training - before


def _duration(seconds: float) -> str:
    if seconds >= 90:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


UNSURE = 0.5  # a range test less confident than this leaves the search centred between its pick and its edge


def lr_range(now: SoFar) -> Stage:
    """An LR range test at the task's batch: a suggestion, and the edge past which the loss climbs."""
    ctx = now.ctx
    if ctx.fixed.learning_rate is not None:
        return Stage("lr_range", None, "learning_rate is fixed", skipped="fixed")
    task = ctx.task
    run = budget.TrunkPlan((task.epochs,), budget.steps_per_epoch(ctx.train_items, task.batch_size, task.accumulation))
    room = now.purse().less(*budget.trunk_cost(run, 0, task.batch)).seconds  # one full run set aside
    steps = budget.range_steps(ctx.run_items, task.batch, now.budget_seconds, now.clock.seconds(task.batch), room)
    now.say(f"range test, {steps} steps")
    load_weights(task.model, ctx.initial)
    torch.manual_seed(ctx.seed)
    begin = time.perf_counter()
    result = find_lr(task, train_loader=task.train_loader(ctx.seed), num_steps=steps,
                     accumulation_steps=task.accumulation)
    seconds = time.perf_counter() - begin
    low, high = result.interval
    why = f"; {result.caveat}" if result.caveat else ""
    seen = CurveSeen(tuple(result.lrs), tuple(result.losses), tuple(result.smoothed_losses), result.confidence,
                     result.stop_reason, dict(result.alternatives))
    return Stage("lr_range", RangeTest(result.suggestion, low, high, result.confidence),
                 f"range test over {len(result.lrs)} steps suggests {result.suggestion:.3g} ({result.rule}); the curve "
                 f"supports {low:.3g} to {high:.3g}, confidence {result.confidence:.2f}{why}", seen,
                 spent=Cost(len(result.lrs) * task.batch, seconds))


def batch(now: SoFar) -> Stage:
    """The batches worth trying: the task's, and the critical batch the gradient noise scale points to; the
    largest micro-batch that fits memory; the rule that rescales the LR between them. Run only where the
    trials cost a small share of what the search could spend: they cost the same items whatever the run."""
    ctx = now.ctx
    task, b = ctx.task, ctx.task.batch
    rule = _rule(task)
    if ctx.fixed.batch_size is not None:
        fixed = ctx.fixed.batch_size
        steps = ctx.fixed.accumulation or task.accumulation
        return Stage("batch", Batches((fixed * steps,), fixed, rule), "batch size is fixed", skipped="fixed")
    kept = Batches((b,), task.batch_size, rule)
    if isinstance(task.train_data, DataLoader):
        return Stage("batch", kept, "the task gives a ready DataLoader, whose batch size tune keeps",
                     skipped="data loader")
    if not _batch_pays(now):
        return Stage("batch", kept, f"measuring the batch would cost more than {budget.BATCH_SHARE:.0%} of what the "
                     f"LR search can spend: the task's batch {b} is kept", skipped="budget")
    now.say("gradient noise scale and memory")
    begin = time.perf_counter()
    spent, batches, noise = _noise_candidates(now)
    found = _largest_micro(task, batches)
    spent += sum(t.batch_size for t in found.trials) + min(batches)
    seen = dataclasses.replace(noise, max_micro=found.batch_size, memory_limit=found.limit, trials=found.trials)
    return Stage("batch", Batches(tuple(batches), found.batch_size, rule), _batch_why(b, batches, seen, rule), seen,
                 spent=Cost(spent, time.perf_counter() - begin))


def _largest_micro(task: Task, batches: list[int]) -> BatchSizeResult:
    """The largest micro-batch up to the largest batch to try, searched from the task's micro-batch (which should
    fit; from 1 where it does not)."""
    try:
        start = min(task.batch_size, max(batches))
        return find_batch_size(task, start=start, max_batch_size=max(batches), steps_per_trial=1)
    except GradpilotError:
        return find_batch_size(task, max_batch_size=max(batches), steps_per_trial=1)


def _batch_pays(now: SoFar) -> bool:
    """Whether the batch trials cost at most BATCH_SHARE of what is left once the trunk is paid for."""
    ctx = now.ctx
    purse, b = now.purse(), ctx.task.batch
    per_epoch = budget.steps_per_epoch(ctx.train_items, ctx.task.batch_size, ctx.task.accumulation)
    trunk = budget.TrunkPlan(budget.branch_epochs(ctx.task.epochs), per_epoch)
    free = purse.less(*budget.trunk_cost(trunk, 0, b))
    cost = _batch_cost(ctx)
    return free.items > 0 and cost <= budget.BATCH_SHARE * free.items and \
        budget.BATCH_SLOWNESS * now.clock.seconds(cost) <= budget.BATCH_SHARE * free.seconds


def _noise_batches(ctx: Context) -> tuple[int, int, int]:
    """The noise-scale estimate's small and big batch and how many of each it averages."""
    b = ctx.task.batch
    return max(1, min(8, b // 4)), min(ctx.train_items, max(4 * b, 32)), 8


def _batch_cost(ctx: Context) -> int:
    """Items the batch stage reads at most: the noise-scale batches, then trials doubling up to 8× the batch
    (about 16 batches in all), then the smaller batch once."""
    small, big, reps = _noise_batches(ctx)
    return reps * (small + big) + 17 * ctx.task.batch_size


def _batch_why(b: int, batches: list[int], seen: BatchSeen, rule: str) -> str:
    if seen.noise_error:
        return f"the task's batch {b} is kept: {seen.noise_error}"
    if len(batches) > 1:
        return (f"the noise scale puts the critical batch near {seen.noise_scale:.0f}: trying "
                f"{' and '.join(map(str, batches))}, LR rescaled by the {rule} rule")
    return f"the task's batch {b} is kept: the noise scale ({seen.noise_scale:.0f}) gives no reason to change it"


def _noise_candidates(now: SoFar) -> tuple[int, list[int], BatchSeen]:
    """The items the noise-scale estimate cost, the batches worth trying, and the evidence. An estimate that
    cannot be made (gradient norms too noisy to tell |G|² from the noise) costs a warning and keeps the task's
    batch; it never stops the tune."""
    ctx = now.ctx
    b, n = ctx.task.batch, ctx.train_items
    small, big, reps = _noise_batches(ctx)
    if big <= small:
        return 0, [b], BatchSeen(noise_scale=float(b))
    load_weights(ctx.task.model, ctx.initial)
    try:
        noise = estimate_noise_scale(ctx.task, small_batch=small, big_batch=big, batches=reps, seed=ctx.seed)
    except GradpilotError as exc:
        why = f"the gradient noise scale could not be measured ({exc})"
        warnings.warn(f"{why}; tune keeps the task's batch {b}", stacklevel=2)
        now.say(f"{why}: batch {b} kept")
        return reps * (small + big), [b], BatchSeen(noise_error=why)
    batches = [b]
    if math.isfinite(noise.b_simple) and noise.b_simple > 0:
        shift = max(-2, min(3, round(math.log2(noise.b_simple / b))))
        other = b * 2**shift if shift >= 0 else max(1, b >> -shift)
        if other != b and n // other >= 8:  # at least 8 steps an epoch
            batches.append(other)
    return reps * (small + big), batches, BatchSeen(noise_scale=noise.b_simple)


def _rule(task: Task) -> scaling.LRRule:
    try:
        return scaling.resolve_rule("auto", task.optimizer_name)
    except GradpilotError:
        return "none"  # an optimizer gradpilot cannot place: the search measures instead


def accumulation(now: SoFar) -> Stage:
    """Each batch to try as micro-batch × accumulation steps: accumulate where the batch exceeds memory."""
    chosen: Batches = now.decided.need("batch")
    fixed, task = now.ctx.fixed, now.ctx.task
    if fixed.accumulation is not None:
        k = fixed.accumulation
        micro = fixed.batch_size or task.batch_size
        return Stage("accumulation", Splits(((micro, k),)), "accumulation is fixed", skipped="fixed")
    splits, notes = [], []
    for target in chosen.batches:
        if target == task.batch and task.batch_size <= chosen.max_micro:  # the task's own split, as it was set
            splits.append((task.batch_size, task.accumulation))
            notes.append(f"the task's own {task.batch_size} × {task.accumulation}")
            continue
        p = scaling.plan(target, chosen.max_micro)
        splits.append((p.micro_batch_size, p.accumulation_steps))
        notes.append(p.note)
    needed = any(k > 1 for _, k in splits)
    why = "; ".join(n for n in notes if n) if needed else \
        f"every batch tried fits in memory (up to {chosen.max_micro}): no accumulation"
    return Stage("accumulation", Splits(tuple(splits)), why, SplitsSeen(tuple(notes)))
