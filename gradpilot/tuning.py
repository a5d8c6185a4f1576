"""``tune``: the order practitioners tune in — learning rate, batch size, accumulation, the LR checked by short
real runs, epochs, schedule — as one call within a budget, ending in a plan, the trained model and a record.

One unit of budget is one training run of the task as written: its epochs over its training set. Every item
tune trains on counts (the range test, the batch trials, the search's runs and cooldowns, the final runs).
Each stage is a function of the same shape (``_Context -> Stage``) in ``gradpilot._stages``; this module
drives them, records them in ``DIR/tune.json`` as they finish (what a resume reads back) and writes the outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from optuna.storages import BaseStorage
from torch import nn

from gradpilot import _checkpoint, _final_stages, _fingerprint, _hf_plan, _stages, _validate, _workers
from gradpilot._files import json_safe, write_json
from gradpilot._stages import Stage, _Context
from gradpilot.errors import GradpilotError
from gradpilot.task import Task

__all__ = ["FIXABLE", "Stage", "TuneResult", "tune"]

FIXABLE = _hf_plan.FIXABLE
_NEW_FOLDER = "use a new out_dir (or delete this one) to tune afresh"
STAGES: tuple[tuple[str, Callable[[_Context], Stage]], ...] = (
    ("lr_range", _stages.lr_range),
    ("batch", _stages.batch),
    ("accumulation", _stages.accumulation),
    ("lr_search", _stages.lr_search),
    ("epochs", _final_stages.epochs),
    ("schedule", _final_stages.schedule),
)


@dataclass(frozen=True)
class TuneResult:
    """The plan (Hugging Face ``TrainingArguments`` names), every stage's decision and evidence, the budget and
    what was spent (in runs), the validation metric of the model tune trained, and that model."""

    plan: dict[str, Any]
    stages: tuple[Stage, ...]
    budget: float
    spent: float
    metric: float
    model: nn.Module
    out_dir: Path
    run_samples: int  # the items one run of the task trains on: the budget's unit

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
    budget: float = 3.0,
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
    """Tune ``task``'s LR, batch, accumulation, epochs and schedule within ``budget`` runs of the task.

    ``fixed`` holds plan values to keep (``{"per_device_train_batch_size": 64}``; short names such as
    ``batch_size`` or ``epochs`` work too): their stages are skipped and the rest adapt (a fixed batch still
    gets its LR rescaled). ``cooldown`` is the share of each short run spent decaying the LR before it is
    scored (0: score at the constant LR). ``progress(message, spent_runs)`` follows the work.

    Where the work runs: by default, in this process, its trials in a SQLite file in ``out_dir``; the same call
    again after a crash or kill continues, running nothing that finished. ``n_jobs`` > 1 runs that many worker
    processes on this machine, sharing Optuna's journal file in ``out_dir``. ``storage`` (an Optuna storage or
    any URL Optuna accepts, e.g. ``postgresql://user@host/db``) with a ``study`` name shares the work between
    every ``tune`` process started with the same two, on any machine: each stage and each short run runs once,
    and all end with the same plan. ``backend="ray"`` runs the search's short runs as Ray Tune trials instead
    (Optuna's search, Ray's successive halving), on a local Ray or the cluster at ``ray_address``.
    """
    if backend not in ("optuna", "ray"):
        raise GradpilotError(f"backend must be 'optuna' or 'ray', got {backend!r}")
    if backend == "ray" and n_jobs > 1:
        raise GradpilotError("with backend='ray', Ray places the work: leave n_jobs at 1")
    ctx = _context(task, budget, Path(out_dir), fixed or {}, storage, study, n_jobs, seed, cooldown, progress)
    n_jobs = _at_most_the_cores(n_jobs)
    ctx.on_ray, ctx.ray_address = backend == "ray", ray_address
    try:
        if n_jobs == 1:
            return _drive(ctx)
        from gradpilot import _local_workers

        with _local_workers.LocalWorkers(ctx, n_jobs, lambda c: _drive(c, outputs=False)) as helpers:
            ctx.wait = helpers.watch
            return _drive(ctx)
    except BaseException:  # stopped half-way (an error, Ctrl-C): the task's model is left as tune found it
        task.model.load_state_dict(ctx.initial)
        raise


def _at_most_the_cores(n_jobs: int) -> int:
    """More worker processes than cores only take turns (and contend for the journal file's lock)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n_jobs > cores:
        warnings.warn(f"n_jobs={n_jobs} is more than the {cores} cores this process may use: running {cores} "
                      "workers (more would only take turns)", stacklevel=3)
    return min(n_jobs, cores)


def _drive(ctx: _Context, *, outputs: bool = True) -> TuneResult:
    """One worker's way through the stages: a stage runs in whichever worker takes it first, and every worker
    reads its record back; the LR search's short runs are shared out between all of them."""
    record = _load_record(ctx)
    stages = []
    for name, run_stage in STAGES:
        start = time.perf_counter()
        if name == "lr_search":
            _stages.search(ctx)  # every worker's share of the short runs; the stage then reads their scores
        saved = _workers.once(ctx.storage, f"{ctx.prefix}:stage:{name}",
                              functools.partial(_run, run_stage, ctx, start), ctx.wait)
        stage = Stage(**saved)
        ctx.values.update(stage.decision)
        stages.append(stage)
        record["stages"][name] = saved
        ctx.spent = sum(int(s["samples"]) for s in record["stages"].values())
        if outputs:
            write_json(ctx.out / "tune.json", record)
    if not outputs:
        return _result(ctx, tuple(stages))
    return _outputs(ctx, tuple(stages), record)


def _run(stage: Callable[[_Context], Stage], ctx: _Context, start: float) -> dict[str, Any]:
    """The stage's record, with the wall seconds since ``start`` in the worker that ran it."""
    done = dataclasses.replace(stage(ctx), seconds=round(time.perf_counter() - start, 3))
    out: dict[str, Any] = json_safe(asdict(done))
    return out


def _context(task: Task, budget: float, out: Path, fixed: dict[str, Any], storage: str | BaseStorage | None,
             study: str, n_jobs: int, seed: int, cooldown: float,
             progress: Callable[[str, float], None] | None) -> _Context:
    if not isinstance(task, Task):
        raise GradpilotError(f"tune needs a gradpilot.Task, got {type(task).__name__}")
    _validate.positive_float("budget", budget)
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
    for name in ("tune.json", "plan.yaml", "model.pt", "report.html", "runs/initial.pt"):
        if (out / name).is_dir():  # found now, not after the whole tune
            raise GradpilotError(f"{out / name} is a folder, where tune writes a file: move it away, or give another "
                                 "out_dir")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    n = _train_length(task)
    own = _fingerprint.weights_digest(task.model.state_dict())  # before runs/initial.pt is read over them
    initial = _initial_weights(task, out / "runs" / "initial.pt")
    store = _workers.open_storage(storage, out, shared=n_jobs > 1)
    ctx = _Context(task=task, out=out, seed=seed, fixed=_hf_plan.parse_fixed(fixed), cooldown=cooldown,
                   train_items=n, budget_samples=math.floor(budget * n * task.epochs), budget=budget,
                   initial=initial, storage=store, prefix=study, progress=progress, task_weights=own)
    _stages.check_budget(ctx)
    fresh = not _workers.has_queue(store, f"{study}:settings")
    ctx.settings = json.loads(json.dumps(_settings(ctx)))
    _check_folder(ctx, fresh_storage=fresh)  # first: a folder's own tune is the user's to continue or start anew
    if storage is None:  # the storage is this command's own: nothing else can be working on it
        _workers.sweep(store, study, keep=(f"{study}:lr_search",))
    _check_shared_settings(ctx)
    return ctx


def _check_folder(ctx: _Context, *, fresh_storage: bool) -> None:
    """A tune folder is continued only with the settings and the storage it was started with: else its record
    and its saved runs would be mixed with another tune's. Checked here, before any worker starts."""
    path = ctx.out / "tune.json"
    if not path.exists():
        return
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GradpilotError(f"{path} cannot be read ({exc}): use a new out_dir") from None
    saved = record.get("settings") if isinstance(record, dict) else None
    _fingerprint.check_same(saved if isinstance(saved, dict) else {}, ctx.settings, what=f"{ctx.out} holds a tune",
                            remedy="use a new out_dir, or the same arguments to continue it")
    _check_same_start(ctx, record)
    if fresh_storage and record.get("stages"):
        raise GradpilotError(f"{ctx.out} holds a tune whose trials are not in {ctx.settings['storage']} (was "
                             "trials.db or trials.journal deleted?): use a new out_dir to tune afresh")


def _check_shared_settings(ctx: _Context) -> None:
    """Workers sharing a study must tune the same thing the same way: the first one's settings rule."""
    mine = ctx.settings
    first = _workers.once(ctx.storage, f"{ctx.prefix}:settings", lambda: mine)
    _fingerprint.check_same(first, mine, what=f"study {ctx.prefix!r} in this storage was started",
                            remedy="use another --study, or the same arguments and task")


def _check_same_start(ctx: _Context, record: dict[str, Any]) -> None:
    """The task's model must come with the weights the folder's tune started from (runs/initial.pt is read over
    them, so a model initialised otherwise would silently be tuned from the old weights). It may also hold
    those very weights, or the ones tune trained (the same Task object again, in one Python session)."""
    recorded = record.get("task_weights")
    if not recorded or ctx.task_weights in (recorded, _fingerprint.weights_digest(ctx.initial)):
        return
    model = ctx.out / "model.pt"
    if model.exists() and ctx.task_weights == _fingerprint.weights_digest(_checkpoint.load_file(model, _NEW_FOLDER)):
        return
    raise GradpilotError(f"{ctx.out} holds a tune of a model that started from other weights (task_weights: "
                         f"{recorded} → {ctx.task_weights}): the task's model is initialised differently now; build "
                         "it as before (the same seed and init) to continue, or use a new out_dir")


def _train_length(task: Task) -> int:
    dataset, _ = task.dataset()
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise GradpilotError("tune needs a training set with a length (a map-style Dataset): its budget is counted "
                             "in passes over it") from None


def _initial_weights(task: Task, path: Path) -> dict[str, torch.Tensor]:
    """The weights every run starts from, kept in DIR so a resumed tune starts its runs from the same ones."""
    if path.exists():
        state: dict[str, torch.Tensor] = _checkpoint.load_file(path, _NEW_FOLDER)
        try:
            task.model.load_state_dict(state)
        except RuntimeError:
            raise GradpilotError(f"{path} holds another model's weights: use a new out_dir for this task") from None
        return state
    state = {k: v.detach().clone() for k, v in task.model.state_dict().items()}
    _checkpoint.save_file(path, state)
    return state


def _settings(ctx: _Context) -> dict[str, Any]:
    """What a tune folder's record must match for the same command to continue it: the arguments, and what
    ``fit``'s fingerprint holds of the task (optimizer settings, data, model, metric's direction, clipping)."""
    t = ctx.task
    return {"task": t.name, "storage": _workers.describe(ctx.storage, ctx.out), "study": ctx.prefix,
            "budget": ctx.budget, "fixed": ctx.fixed, "seed": ctx.seed, "cooldown": ctx.cooldown,
            "train_items": ctx.train_items, "epochs": t.epochs, "batch_size": t.batch_size, "lr": t.lr,
            "higher_is_better": t.higher_is_better, "max_grad_norm": t.max_grad_norm,
            "metric": _name(t.metric), "loss": _name(t.loss_fn), "step_fn": _name(t.step_fn),
            "model": _fingerprint.model_layout(t.model), "train_data": _fingerprint.data_digest(t.dataset()[0]),
            "val_data": _fingerprint.data_digest(t.val_data),
            "initial_weights": _fingerprint.weights_digest(ctx.initial),
            **_fingerprint.optimizer_settings(t.make_optimizer())}


def _name(fn: Any) -> str | None:
    """A function by its name; a loss module by its class and its plain settings (``label_smoothing=0.1``)."""
    if fn is None:
        return None
    if hasattr(fn, "__qualname__"):
        return str(fn.__qualname__)
    plain = {k: v for k, v in sorted(vars(fn).items()) if not k.startswith("_") and k != "training" and
             isinstance(v, (bool, int, float, str, type(None)))}
    return type(fn).__qualname__ + "(" + ", ".join(f"{k}={v!r}" for k, v in plain.items()) + ")"


def _load_record(ctx: _Context) -> dict[str, Any]:
    """The record this run writes: its settings (checked against the folder's by ``_check_folder``) and the
    stages, each read back from the storage as it is reached."""
    return {"settings": ctx.settings, "task_weights": ctx.task_weights, "stages": {}}


def _outputs(ctx: _Context, stages: tuple[Stage, ...], record: dict[str, Any]) -> TuneResult:
    """plan.yaml, model.pt and the finished tune.json; the model holds the best weights tune trained (where
    another machine's worker trained them, model.pt is on that machine: the record says where)."""
    plan, reasons = _hf_plan.plan(ctx.values, ctx.task, stages)
    _hf_plan.write_yaml(plan, reasons, ctx.out / "plan.yaml", header=f"gradpilot tune plan for {ctx.task.name}")
    trained = ctx.out / "runs" / ctx.values["model_file"]
    if trained.exists():
        best: dict[str, torch.Tensor] = _checkpoint.load_file(trained, _NEW_FOLDER)
        ctx.task.model.load_state_dict(best)
        _checkpoint.save_file(ctx.out / "model.pt", best)
    else:
        warnings.warn(f"the final run was trained by worker {ctx.values.get('trained_by')}: model.pt is in its "
                      "out_dir, not here", stacklevel=3)
    result = _result(ctx, stages)
    if not math.isfinite(result.metric):
        warnings.warn("the validation metric of the model tune trained is not finite (NaN): every choice tune made "
                      "compared NaNs; check Task.metric on the validation data", stacklevel=3)
    record.update(plan=plan, reasons=reasons, spent_runs=result.spent, budget_runs=ctx.budget,
                  metric=result.metric, seconds={s.name: s.seconds for s in stages})
    write_json(ctx.out / "tune.json", record)
    _report(ctx.out)
    return result


def _result(ctx: _Context, stages: tuple[Stage, ...]) -> TuneResult:
    plan, _ = _hf_plan.plan(ctx.values, ctx.task, stages)
    spent = ctx.spent / (ctx.train_items * ctx.task.epochs)
    metric = ctx.values["metric"]  # None in the record where the metric was NaN (JSON has no NaN)
    return TuneResult(plan, stages, ctx.budget, spent, math.nan if metric is None else float(metric), ctx.task.model,
                      ctx.out, ctx.run_samples)


def _report(out: Path) -> None:
    """report.html; a figure that cannot be drawn costs the page, never the plan or the model."""
    from gradpilot.report import write_tune_report

    try:
        write_tune_report(out)
    except Exception as exc:  # the page is a view: what tune decided is already on disk
        warnings.warn(f"report.html was not written ({type(exc).__name__}: {exc}); "
                      f"`gradpilot report {out}` tries again", stacklevel=3)
