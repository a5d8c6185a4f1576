"""``tune``: the order practitioners tune in — learning rate, batch size, accumulation, the LR checked by short
real runs, epochs, schedule — as one call within a budget, ending in a plan, the trained model and a record.

One unit of budget is one run of the task as written: its epochs over its training set, with a validation
each epoch, in the wall time it takes (measured first, by the clock) and in items; ``time_budget`` gives the
seconds directly. Each stage is a function of one shape (``SoFar -> Stage``); this module drives them, runs
each in whichever worker takes it first, records them in ``tune.json`` as they finish (what a resume reads
back) and writes the outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage
from torch import nn

from gradpilot import _validate
from gradpilot.errors import GradpilotError
from gradpilot.train import fingerprint
from gradpilot.train.state import load_weights
from gradpilot.train.task import Task
from gradpilot.tuning import queue, record, search, stages, trunk
from gradpilot.tuning.budget import parse_duration
from gradpilot.tuning.context import Budget, Context, SoFar
from gradpilot.tuning.fixed import FIXABLE, Fixed
from gradpilot.tuning.folder import TuneFolder
from gradpilot.tuning.halving import RungBackend
from gradpilot.tuning.state import Stage, TuneRecord

__all__ = ["FIXABLE", "Stage", "TuneResult", "parse_duration", "tune"]

DEFAULT_BUDGET = 2.0


@dataclass(frozen=True)
class Step:
    """A stage of the workflow: its name, the decision one worker takes (``decide``), and the work every worker
    takes part in before it (``share``: the search's races)."""

    name: str
    decide: Callable[[SoFar], Stage]
    share: Callable[[SoFar], None] | None = None


STEPS = (
    Step("clock", stages.clock),
    Step("lr_range", stages.lr_range),
    Step("batch", stages.batch),
    Step("accumulation", stages.accumulation),
    Step("lr_search", search.decide, search.race),
    Step("epochs", trunk.epochs),
    Step("schedule", trunk.schedule),
)


@dataclass(frozen=True)
class TuneResult:
    """The plan (Hugging Face ``TrainingArguments`` names), every stage's decision and evidence, the budget and
    what was spent (in runs of wall time, and in runs of items), the validation metric of the model tune
    trained, and that model."""

    plan: dict[str, Any]
    stages: tuple[Stage, ...]
    budget: float  # runs
    spent: float  # runs of wall time: the seconds tune's work took over one run's
    metric: float
    model: nn.Module
    out_dir: Path
    run_items: int  # the items one run of the task trains on
    run_seconds: float  # one run's wall time, as measured
    seconds: float  # tune's work, in seconds
    spent_items: float  # runs of items trained
    wall_seconds: float = math.nan  # the tune call's, start to end (the report included)
    process_seconds: float = math.nan  # the whole command's: the process's age at the end (start-up included)
    metric_label: str = "metric"  # what the score is called (the task's metric, or the validation loss)
    higher_is_better: bool = True

    @property
    def folder(self) -> TuneFolder:
        return TuneFolder(self.out_dir)

    @property
    def plan_path(self) -> Path:
        return self.folder.plan

    @property
    def model_path(self) -> Path:
        return self.folder.model

    @property
    def record_path(self) -> Path:
        return self.folder.record

    @property
    def report_path(self) -> Path:
        return self.folder.report


def tune(
    task: Task,
    *,
    budget: float | None = None,
    time_budget: float | str | None = None,
    out_dir: str | Path = "gradpilot-tune",
    fixed: dict[str, Any] | None = None,
    storage: str | BaseStorage | None = None,
    study: str = "gradpilot",
    n_jobs: int = 1,
    backend: RungBackend | None = None,
    seed: int = 0,
    cooldown: float = 0.2,
    progress: Callable[[str, float], None] | None = None,
) -> TuneResult:
    """Tune ``task``'s LR, batch, accumulation, epochs and schedule within ``budget`` runs of the task (default
    2), counted in wall time as measured and in items — or within ``time_budget`` (seconds, or ``"30m"``,
    ``"2h"``, ``"90s"``).

    ``fixed`` holds plan values to keep (``{"per_device_train_batch_size": 64}``; short names such as
    ``batch_size`` or ``epochs`` work too): their stages are skipped and the rest adapt (a fixed batch still
    gets its LR rescaled). ``cooldown`` is the share of each short run spent decaying the LR before it is
    scored (0: score at the constant LR). ``progress(message, spent_runs)`` follows the work.

    Where the work runs: by default, in this process, its trials in a journal file in ``out_dir``; the same call
    again after a crash or kill continues, running nothing that finished. ``n_jobs`` > 1 runs that many worker
    processes on this machine, sharing Optuna's journal file in ``out_dir``. ``storage`` (an Optuna storage or
    any URL Optuna accepts, e.g. ``postgresql://user@host/db``) with a ``study`` name shares the work between
    every ``tune`` process started with the same two, on any machine: each stage and each short run runs once,
    and all end with the same plan. ``backend`` runs the search's short runs elsewhere
    (``gradpilot.integrations.ray_tune.RayBackend()``: as Ray Tune trials, on a local Ray or a cluster).
    """
    if backend is not None and not hasattr(backend, "run_rung"):
        raise GradpilotError(f"backend must run a rung's short runs (e.g. gradpilot.integrations.ray_tune."
                             f"RayBackend()), got {backend!r}")
    if backend is not None and n_jobs > 1:
        raise GradpilotError("with a backend, it places the work: leave n_jobs at 1")
    called = time.perf_counter()
    runs, seconds = _budgets(budget, time_budget)
    ctx = _context(task, Budget(runs, seconds), TuneFolder(Path(out_dir)), Fixed.parse(fixed or {}), storage, study,
                   n_jobs, seed, cooldown, progress, backend)
    ctx = dataclasses.replace(ctx, called=called)
    n_jobs = _at_most_the_cores(n_jobs)
    try:
        if n_jobs == 1:
            return _drive(ctx)
        from gradpilot.tuning.local_workers import LocalWorkers

        with LocalWorkers(ctx, n_jobs, lambda c: _drive(c, outputs=False)) as helpers:
            return _drive(dataclasses.replace(ctx, wait=helpers.watch))
    except BaseException:  # stopped half-way (an error, Ctrl-C): the task's model is left as tune found it
        load_weights(task.model, ctx.initial)
        raise


def _budgets(runs: float | None, seconds: float | str | None) -> tuple[float | None, float | None]:
    """The budget in runs or in seconds (one of them; runs by default)."""
    if seconds is None:
        return (DEFAULT_BUDGET if runs is None else _validate.positive_float("budget", runs)), None
    if runs is not None:
        raise GradpilotError("give a budget in runs or a time_budget, not both")
    return None, parse_duration(seconds)


def _at_most_the_cores(n_jobs: int) -> int:
    """More worker processes than cores only take turns (and contend for the journal file's lock)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n_jobs > cores:
        warnings.warn(f"n_jobs={n_jobs} is more than the {cores} cores this process may use: running {cores} "
                      "workers (more would only take turns)", stacklevel=3)
    return min(n_jobs, cores)


def _drive(ctx: Context, *, outputs: bool = True) -> TuneResult:
    """One worker's way through the stages: a stage runs in whichever worker takes it first, and every worker
    reads its record back; the LR search's short runs are shared out between all of them."""
    began = time.perf_counter()
    now, done = SoFar(ctx), list[Stage]()
    for step in STEPS:
        start = time.perf_counter()
        if step.share is not None:
            step.share(now)  # every worker's part in the work (the search's rungs); the decision then reads it
        saved = queue.once(ctx.storage, f"{ctx.prefix}:stage:{step.name}",
                           functools.partial(_decided, step.decide, now, start), ctx.wait)
        stage = Stage.from_json(saved)
        now, done = now.after(stage), [*done, stage]
        if outputs:
            _record(now, tuple(done)).write(ctx.folder)
    if not outputs:
        return _result(now, tuple(done), TuneRecord(ctx.settings, ctx.task_weights), began)
    finished = record.stamp(record.write_outputs(now, _record(now, tuple(done))), ctx)
    _report(ctx.folder)
    finished = record.stamp(finished, ctx, final=True)
    return _result(now, tuple(done), finished, began)


def _decided(decide: Callable[[SoFar], Stage], now: SoFar, start: float) -> dict[str, Any]:
    """The stage's record, its wall seconds since ``start`` in the worker that ran it: what its runs did not
    account for (bookkeeping, start-up) is its ``other``."""
    made = decide(now)
    wall = time.perf_counter() - start
    other = max(0.0, wall - made.spent.seconds)
    return dataclasses.replace(made, spent=dataclasses.replace(made.spent, other=made.spent.other + other)).to_json()


def _record(now: SoFar, done: tuple[Stage, ...]) -> TuneRecord:
    """tune.json as it stands: the stages done and what the budget says of them."""
    ctx = now.ctx
    run_seconds = now.decided.clock.run_seconds if now.decided.clock else float("nan")
    return TuneRecord(ctx.settings, ctx.task_weights, done, now.spent, now.spent_runs,
                      now.spent.items / ctx.run_items, now.budget_runs, now.budget_runs * run_seconds, run_seconds,
                      _peak_disk(done))


def _peak_disk(done: tuple[Stage, ...]) -> int:
    """The most bytes tune's saved runs held at once (``runs/``): the search's peak or the trunk's."""
    return max((int(getattr(s.evidence, "peak_disk_bytes", 0)) for s in done), default=0)


def _result(now: SoFar, done: tuple[Stage, ...], finished: TuneRecord, began: float) -> TuneResult:
    ctx = now.ctx
    return TuneResult(finished.plan, done, now.budget_runs, now.spent_runs, finished.metric, ctx.task.model,
                      ctx.folder.root, ctx.run_items, now.decided.need("clock").run_seconds,
                      time.perf_counter() - began, now.spent.items / ctx.run_items, finished.wall_seconds,
                      finished.process_seconds, ctx.task.metric_label, ctx.task.higher_is_better)


def _context(task: Task, budget: Budget, folder: TuneFolder, fixed: Fixed, storage: str | BaseStorage | None,
             study: str, n_jobs: int, seed: int, cooldown: float, progress: Callable[[str, float], None] | None,
             backend: RungBackend | None) -> Context:
    if not isinstance(task, Task):
        raise GradpilotError(f"tune needs a gradpilot.Task, got {type(task).__name__}")
    _validate.positive_int("n_jobs", n_jobs)
    if _validate.unit_interval("cooldown", cooldown, closed=True) >= 1:
        raise GradpilotError(f"cooldown must be in [0, 1), got {cooldown=}")
    if not isinstance(study, str) or not study or ":" in study:
        raise GradpilotError(f"study must be a non-empty name without ':', got {study!r}")
    if task.val_data is None:
        raise GradpilotError("tune needs validation data: set Task.val_data (every choice tune makes is checked on it)")
    if n_jobs > 1 and storage is not None:
        raise GradpilotError("n_jobs runs workers on this machine's journal file: for a shared storage, start one "
                             "tune per worker with the same storage and study instead")
    _validate.writable_folder(folder.root, "out_dir")
    record.check_outputs(folder)
    folder.runs.mkdir(parents=True, exist_ok=True)
    n = record.train_length(task)
    own = fingerprint.weights_digest(task.model.state_dict())  # before runs/initial.pt is read over them
    initial = record.initial_weights(task, folder.initial)
    store = queue.open_storage(storage, folder.trials)
    ctx = Context(task=task, folder=folder, seed=seed, fixed=fixed, cooldown=cooldown, budget=budget, train_items=n,
                  val_items=record.val_length(task), initial=initial, storage=store, prefix=study, task_weights=own,
                  progress=progress, backend=backend)
    stages.check_budget(ctx)
    fresh = not queue.has_queue(store, f"{study}:settings")
    ctx = dataclasses.replace(ctx, settings=record.settings(ctx))
    record.check_folder(ctx, fresh_storage=fresh)  # first: a folder's own tune is the user's to continue or start anew
    if storage is None:  # the storage is this command's own: nothing else can be working on it
        queue.sweep(store, study, keep=(f"{study}:lr_search",))
    record.check_shared_settings(ctx)
    return ctx


def _report(folder: TuneFolder) -> None:
    """report.html; a figure that cannot be drawn costs the page, never the plan or the model."""
    from gradpilot.report import write_tune_report

    try:
        write_tune_report(folder.root)
    except Exception as exc:  # the page is a view: what tune decided is already on disk
        warnings.warn(f"report.html was not written ({type(exc).__name__}: {exc}); "
                      f"`gradpilot report {folder.root}` tries again", stacklevel=3)
