"""``tune``: the order practitioners tune in — learning rate, batch size, accumulation, the LR checked by short
real runs, epochs, schedule — as one call within a budget, ending in a plan, the trained model and a record.

One unit of budget is one run of the task as written: its epochs over its training set, with a validation
each epoch, in the wall time it takes (measured first, by the clock) and in items; ``time_budget`` gives the
seconds directly. Each stage is a function of one shape (``Context -> Stage``); this module drives them, runs
each in whichever worker takes it first, records them in ``DIR/tune.json`` as they finish (what a resume
reads back) and writes the outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage
from torch import nn

from gradpilot import _validate
from gradpilot._files import write_json
from gradpilot.errors import GradpilotError
from gradpilot.train import fingerprint as _fingerprint
from gradpilot.train.seam import Cost
from gradpilot.train.task import Task
from gradpilot.tuning import queue, record, search, stages, trunk
from gradpilot.tuning.context import Context
from gradpilot.tuning.plan import FIXABLE, parse_fixed
from gradpilot.tuning.state import Stage

__all__ = ["FIXABLE", "Stage", "TuneResult", "parse_duration", "tune"]

DEFAULT_BUDGET = 2.0
STAGES: tuple[tuple[str, Callable[[Context], Stage]], ...] = (
    ("clock", stages.clock),
    ("lr_range", stages.lr_range),
    ("batch", stages.batch),
    ("accumulation", stages.accumulation),
    ("lr_search", search.lr_search),
    ("epochs", trunk.epochs),
    ("schedule", trunk.schedule),
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
    run_samples: int  # the items one run of the task trains on
    run_seconds: float  # one run's wall time, as measured
    seconds: float  # tune's work, in seconds
    spent_items: float  # runs of items trained

    @property
    def plan_path(self) -> Path:
        return self.out_dir / "plan.yaml"

    @property
    def model_path(self) -> Path:
        return self.out_dir / "model.pt"

    @property
    def record_path(self) -> Path:
        return self.out_dir / "tune.json"

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.html"


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
    backend: str = "optuna",
    ray_address: str | None = None,
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
    and all end with the same plan. ``backend="ray"`` runs the search's short runs as Ray Tune trials instead,
    on a local Ray or the cluster at ``ray_address``.
    """
    if backend not in ("optuna", "ray"):
        raise GradpilotError(f"backend must be 'optuna' or 'ray', got {backend!r}")
    if backend == "ray" and n_jobs > 1:
        raise GradpilotError("with backend='ray', Ray places the work: leave n_jobs at 1")
    runs, seconds = _budgets(budget, time_budget)
    ctx = _context(task, runs, seconds, Path(out_dir), fixed or {}, storage, study, n_jobs, seed, cooldown, progress)
    n_jobs = _at_most_the_cores(n_jobs)
    ctx.on_ray, ctx.ray_address = backend == "ray", ray_address
    try:
        if n_jobs == 1:
            return _drive(ctx)
        from gradpilot.tuning.local_workers import LocalWorkers

        with LocalWorkers(ctx, n_jobs, lambda c: _drive(c, outputs=False)) as helpers:
            ctx.wait = helpers.watch
            return _drive(ctx)
    except BaseException:  # stopped half-way (an error, Ctrl-C): the task's model is left as tune found it
        task.model.load_state_dict(ctx.initial)
        raise


def _budgets(runs: float | None, seconds: float | str | None) -> tuple[float | None, float | None]:
    """The budget in runs or in seconds (one of them; runs by default)."""
    if seconds is None:
        return (DEFAULT_BUDGET if runs is None else _validate.positive_float("budget", runs)), None
    if runs is not None:
        raise GradpilotError("give a budget in runs or a time_budget, not both")
    return None, parse_duration(seconds)


_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(value: float | str) -> float:
    """Seconds from ``90``, ``"90s"``, ``"30m"``, ``"1.5h"``; anything else is refused in one line."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _validate.positive_float("time_budget", float(value))
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h)?\s*", str(value))
    if match is None:
        raise GradpilotError(f"time_budget must be seconds or a duration such as 90s, 30m or 2h, got {value!r}")
    return _validate.positive_float("time_budget", float(match.group(1)) * _UNITS[match.group(2) or "s"])


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
    kept: dict[str, Any] = {"settings": ctx.settings, "task_weights": ctx.task_weights, "stages": {}}
    done = []
    for name, run_stage in STAGES:
        start = time.perf_counter()
        if name == "lr_search":
            search.search(ctx)  # every worker's share of the short runs; the stage then reads their scores
        saved = queue.once(ctx.storage, f"{ctx.prefix}:stage:{name}",
                           functools.partial(_run, run_stage, ctx, start), ctx.wait)
        stage = Stage.from_json(saved)
        ctx.decided.take(stage)
        done.append(stage)
        kept["stages"][name] = saved
        ctx.spent = sum((s.spent for s in done), Cost())
        if outputs:
            write_json(ctx.out / "tune.json", {**kept, **_spent(ctx, done)})
    stages_done = tuple(done)
    if not outputs:
        return _result(ctx, stages_done, {}, float("nan"), began)
    plan, metric = record.write_outputs(ctx, stages_done, {**kept, **_spent(ctx, done)})
    _report(ctx.out)
    return _result(ctx, stages_done, plan, metric, began)


def _run(stage: Callable[[Context], Stage], ctx: Context, start: float) -> dict[str, Any]:
    """The stage's record, its wall seconds since ``start`` in the worker that ran it: what its runs did not
    account for (bookkeeping, start-up) is its ``other``."""
    done = stage(ctx)
    wall = time.perf_counter() - start
    other = max(0.0, wall - done.spent.seconds)
    return dataclasses.replace(done, spent=dataclasses.replace(done.spent, other=done.spent.other + other)).to_json()


def _spent(ctx: Context, done: list[Stage]) -> dict[str, Any]:
    """What tune.json says of the budget: runs spent in wall time and in items, seconds by stage and by kind."""
    seconds = ctx.spent.to_json()
    return {"spent_runs": ctx.spent_runs, "spent_item_runs": ctx.spent.items / ctx.run_items,
            "budget_runs": ctx.budget_runs, "seconds": {k: v for k, v in seconds.items() if k in
                                                        ("training", "validation", "io", "other")},
            "run_seconds": ctx.decided.clock.run_seconds if ctx.decided.clock else None,
            "peak_disk_bytes": _peak_disk(done)}


def _peak_disk(done: list[Stage]) -> int:
    """The most bytes tune's saved runs held at once (``runs/``): the search's peak or the trunk's."""
    return max((int(s.evidence.get("peak_disk_bytes", 0)) for s in done), default=0)


def _result(ctx: Context, done: tuple[Stage, ...], plan: dict[str, Any], metric: float, began: float) -> TuneResult:
    return TuneResult(plan, done, ctx.budget_runs, ctx.spent_runs, metric, ctx.task.model, ctx.out, ctx.run_items,
                      ctx.clock.run_seconds, time.perf_counter() - began, ctx.spent.items / ctx.run_items)


def _context(task: Task, runs: float | None, seconds: float | None, out: Path, fixed: dict[str, Any],
             storage: str | BaseStorage | None, study: str, n_jobs: int, seed: int, cooldown: float,
             progress: Callable[[str, float], None] | None) -> Context:
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
    _validate.writable_folder(out, "out_dir")
    record.check_outputs(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    n = record.train_length(task)
    own = _fingerprint.weights_digest(task.model.state_dict())  # before runs/initial.pt is read over them
    initial = record.initial_weights(task, out / "runs" / "initial.pt")
    store = queue.open_storage(storage, out)
    ctx = Context(task=task, out=out, seed=seed, fixed=parse_fixed(fixed), cooldown=cooldown, train_items=n,
                  budget=runs, time_budget=seconds, initial=initial, storage=store, prefix=study, progress=progress,
                  task_weights=own)
    stages.check_budget(ctx)
    fresh = not queue.has_queue(store, f"{study}:settings")
    ctx.settings = record.settings(ctx)
    record.check_folder(ctx, fresh_storage=fresh)  # first: a folder's own tune is the user's to continue or start anew
    if storage is None:  # the storage is this command's own: nothing else can be working on it
        queue.sweep(store, study, keep=(f"{study}:lr_search",))
    record.check_shared_settings(ctx)
    return ctx


def _report(out: Path) -> None:
    """report.html; a figure that cannot be drawn costs the page, never the plan or the model."""
    from gradpilot.report import write_tune_report

    try:
        write_tune_report(out)
    except Exception as exc:  # the page is a view: what tune decided is already on disk
        warnings.warn(f"report.html was not written ({type(exc).__name__}: {exc}); "
                      f"`gradpilot report {out}` tries again", stacklevel=3)


