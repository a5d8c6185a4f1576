"""A tune's folder: the settings a resume must match, the checks that keep one folder to one tune, the weights
every run starts from, and the outputs (``plan.yaml``, ``model.pt``, the finished ``tune.json``: a
``state.TuneRecord``)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from gradpilot.errors import GradpilotError
from gradpilot.train import checkpoint, fingerprint
from gradpilot.train.state import load_weights, trainable_state
from gradpilot.train.task import Task
from gradpilot.tuning import plan as hf_plan
from gradpilot.tuning import queue
from gradpilot.tuning.context import Context, SoFar
from gradpilot.tuning.folder import TuneFolder
from gradpilot.tuning.state import Assumed, Trained, TrunkSeen, TuneRecord

NEW_FOLDER = "use a new out_dir (or delete this one) to tune afresh"


def settings(ctx: Context) -> dict[str, Any]:
    """What a tune folder's record must match for the same command to continue it: the arguments, and what
    ``fit``'s fingerprint holds of the task (optimizer settings, data, model, metric's direction, clipping)."""
    t = ctx.task
    out = {"task": t.name, "storage": queue.describe(ctx.storage), "study": ctx.prefix,
           "budget": ctx.budget.runs, "time_budget": ctx.budget.seconds, "fixed": ctx.fixed.names(), "seed": ctx.seed,
           "cooldown": ctx.cooldown, "train_items": ctx.train_items, "epochs": t.epochs, "batch_size": t.batch_size,
           "accumulation": t.accumulation,
           "lr": t.lr, "higher_is_better": t.higher_is_better, "max_grad_norm": t.max_grad_norm,
           "precision": t.precision, "metric": _name(t.metric) or t.metric_name,
           "loss": _name(t.loss_fn), "step_fn": _name(t.step_fn), "metric_code": fingerprint.code_digest(t.metric),
           "loss_code": fingerprint.code_digest(t.loss_fn), "step_fn_code": fingerprint.code_digest(t.step_fn),
           "runner": _name(t.runner), "model": fingerprint.model_layout(t.model),
           "train_data": fingerprint.data_digest(t.dataset()[0]), "val_data": fingerprint.data_digest(t.val_data),
           "initial_weights": fingerprint.weights_digest(ctx.initial),
           **fingerprint.optimizer_settings(t.make_optimizer())}
    plain_out: dict[str, Any] = json.loads(json.dumps(out))
    return plain_out


def _name(fn: Any) -> str | None:
    """A function by its name; a loss module by its class and its plain settings (``label_smoothing=0.1``)."""
    if fn is None:
        return None
    if hasattr(fn, "__qualname__"):
        return str(fn.__qualname__)
    plain_vars = {k: v for k, v in sorted(vars(fn).items()) if not k.startswith("_") and k != "training" and
                  isinstance(v, (bool, int, float, str, type(None)))}
    return type(fn).__qualname__ + "(" + ", ".join(f"{k}={v!r}" for k, v in plain_vars.items()) + ")"


def check_outputs(folder: TuneFolder) -> None:
    for path in folder.outputs:
        if path.is_dir():  # found now, not after the whole tune
            raise GradpilotError(f"{path} is a folder, where tune writes a file: move it away, or give another "
                                 "out_dir")


def check_folder(ctx: Context, *, fresh_storage: bool) -> None:
    """A tune folder is continued only with the settings and the storage it was started with: else its record
    and its saved runs would be mixed with another tune's. Checked here, before any worker starts."""
    path = ctx.folder.record
    if not path.exists():
        return
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GradpilotError(f"{path} cannot be read ({exc}): use a new out_dir") from None
    saved = record.get("settings") if isinstance(record, dict) else None
    fingerprint.check_same(saved if isinstance(saved, dict) else {}, ctx.settings, what=f"{ctx.folder.root} holds a "
                           "tune", remedy="use a new out_dir, or the same arguments to continue it")
    _check_same_start(ctx, record)
    if fresh_storage and record.get("stages"):
        raise GradpilotError(f"{ctx.folder.root} holds a tune whose trials are not in {ctx.settings['storage']} (was "
                             "trials.journal deleted?): use a new out_dir to tune afresh")


def check_shared_settings(ctx: Context) -> None:
    """Workers sharing a study must tune the same thing the same way: the first one's settings rule."""
    mine = ctx.settings
    first = queue.once(ctx.storage, f"{ctx.prefix}:settings", lambda: mine)
    fingerprint.check_same(first, mine, what=f"study {ctx.prefix!r} in this storage was started",
                           remedy="use another --study, or the same arguments and task")


def _check_same_start(ctx: Context, record: dict[str, Any]) -> None:
    """The task's model must come with the weights the folder's tune started from (runs/initial.pt is read over
    them, so a model initialised otherwise would silently be tuned from the old weights). It may also hold
    those very weights, or the ones tune trained (the same Task object again, in one Python session)."""
    recorded = record.get("task_weights")
    if not recorded or ctx.task_weights in (recorded, fingerprint.weights_digest(ctx.initial)):
        return
    model = ctx.folder.model
    if model.exists() and ctx.task_weights == fingerprint.weights_digest(checkpoint.load_file(model, NEW_FOLDER)):
        return
    raise GradpilotError(f"{ctx.folder.root} holds a tune of a model that started from other weights (task_weights: "
                         f"{recorded} → {ctx.task_weights}): the task's model is initialised differently now; build "
                         "it as before (the same seed and init) to continue, or use a new out_dir")


def train_length(task: Task) -> int:
    dataset, _ = task.dataset()
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise GradpilotError("tune needs a training set with a length (a map-style Dataset): its budget is counted "
                             "in passes over it") from None


OVERRUN = 0.3  # runs: a command whose wall time exceeds its budget by more than this says so
OVERRUN_SECONDS = 5.0  # ... and by more than this many seconds (start-up alone is a few on a tiny task)


def process_age() -> float:
    """Seconds since this process started (Linux's /proc; NaN elsewhere): a command's whole wall time."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return math.nan
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def is_command() -> bool:
    """Whether this process is a gradpilot command (``gradpilot tune``, ``python -m gradpilot.cli``), whose whole
    wall time is the cost paid; in a user's script, the tune call's is."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return Path(sys.argv[0]).name == "gradpilot" or (spec is not None and spec.name.startswith("gradpilot.cli"))


def stamp(done: TuneRecord, ctx: Context, *, final: bool = False) -> TuneRecord:
    """tune.json with the wall seconds paid so far: the tune call's and the whole command's. At the end, an
    overrun is said in one warning: the budgeted spend over its budget, or the command's wall time more than
    ``OVERRUN`` runs over it."""
    whole = process_age() if is_command() else math.nan
    stamped = dataclasses.replace(done, wall_seconds=round(time.perf_counter() - ctx.called, 3),
                                  process_seconds=round(whole, 3))
    stamped.write(ctx.folder)
    if final:
        for line in overruns(stamped):
            warnings.warn(line, stacklevel=4)
    return stamped


def overruns(done: TuneRecord) -> list[str]:
    """What a finished tune spent beyond its budget, in words (none where it held)."""
    said, budget, run = [], done.budget_runs, done.run_seconds
    if done.spent_runs > budget + 0.01:
        said.append(f"tune spent {done.spent_runs:.2f} runs of a {budget:.3g}-run budget")
    wall = done.process_seconds if math.isfinite(done.process_seconds) else done.wall_seconds
    if run > 0 and wall > (budget + OVERRUN) * run and wall - budget * run > OVERRUN_SECONDS:
        said.append(f"the whole command took {wall:.0f} s, {wall / run:.2f} runs of the task's wall time against a "
                    f"budget of {budget:.3g} runs: start-up, loading and the runner's calls cost "
                    f"{wall - done.spent.work:.0f} s beyond the runs' own work")
    return said


def val_length(task: Task) -> int:
    """Items in one validation pass (a loader's dataset's, or its batches × its batch size); 0 where it cannot tell."""
    data = task.val_data
    dataset = getattr(data, "dataset", data)
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        size = getattr(data, "batch_size", None)
        try:
            return len(data) * int(size) if size else 0  # type: ignore[arg-type]
        except TypeError:
            return 0


def initial_weights(task: Task, path: Path) -> dict[str, torch.Tensor]:
    """The weights every run starts from, kept in DIR so a resumed tune starts its runs from the same ones."""
    if path.exists():
        state: dict[str, torch.Tensor] = checkpoint.load_file(path, NEW_FOLDER)
        try:
            load_weights(task.model, state)
        except GradpilotError:
            raise GradpilotError(f"{path} holds another model's weights: use a new out_dir for this task") from None
        return state
    state = trainable_state(task.model)  # an adapter on a frozen model: the adapter alone
    checkpoint.save_file(path, state)
    return state


def assumed(now: SoFar) -> Assumed:
    """What the plan's schedule was written for: this tune's items, one process, the winner's batch."""
    from gradpilot.tuning.budget import steps_per_epoch

    chosen = now.decided.need("lr_search")
    trained: Trained = now.decided.need("schedule")
    per_epoch = steps_per_epoch(now.ctx.train_items, chosen.micro_batch, chosen.accumulation)
    return Assumed(now.ctx.train_items, 1, per_epoch, trained.num_train_epochs)


LEARNT = 0.98  # the validation loss fell below this share of the initial weights': the model learnt something
AGAINST = 0.02  # ... while the metric moved this share of its start or more the way the task calls worse


def _check_direction(now: SoFar, record: TuneRecord, trained: Trained) -> None:
    """A metric that got worse, as the task declares better, while the validation loss fell — the model learnt,
    its metric says it unlearnt — is a ``higher_is_better`` the wrong way round, most likely: every choice tune
    made followed it. Said in one warning."""
    task, clock = now.ctx.task, now.decided.clock
    epochs = record.stage("epochs")
    seen = epochs.evidence if epochs is not None else None
    if task.metric is None or clock is None or not isinstance(seen, TrunkSeen) or not seen.branches:
        return
    start, end, loss = clock.start_metric, trained.metric, seen.branches[seen.winner].loss
    if not all(math.isfinite(v) for v in (start, end, loss, clock.start_loss)) or loss > LEARNT * clock.start_loss:
        return
    worse = (start - end) if task.higher_is_better else (end - start)
    if worse > AGAINST * max(abs(start), 1e-12):
        way = "higher" if task.higher_is_better else "lower"
        warnings.warn(f"the metric got worse by the task's own direction ({start:.4g} → {end:.4g}, {way} is better) "
                      f"while the validation loss fell ({clock.start_loss:.4g} → {loss:.4g}): is higher_is_better "
                      f"right? Every choice tune made followed it", stacklevel=4)


def write_outputs(now: SoFar, record: TuneRecord) -> TuneRecord:
    """plan.yaml, model.pt and the finished tune.json; the task's model holds the best weights tune trained
    (where another machine's worker trained them, model.pt is on that machine: the record says where)."""
    ctx = now.ctx
    trained: Trained = now.decided.need("schedule")
    if not math.isfinite(trained.metric):
        raise GradpilotError(f"the model tune trained is broken: its validation loss or metric is NaN or inf "
                             f"({trained.metric}), so no plan or model is written; check the data, the loss and "
                             f"Task.metric (gradpilot diagnose {ctx.folder.final}), or fix a lower learning_rate")
    _check_direction(now, record, trained)
    written = assumed(now)
    plan, reasons = hf_plan.plan(now.decided, ctx.task, record.stages, written)
    hf_plan.write_yaml(plan, reasons, ctx.folder.plan, header=f"gradpilot tune plan for {ctx.task.name}")
    if ctx.folder.best.exists():
        best: dict[str, torch.Tensor] = checkpoint.load_file(ctx.folder.best, NEW_FOLDER)
        load_weights(ctx.task.model, best)
        checkpoint.save_file(ctx.folder.model, best)
    else:
        warnings.warn(f"the final run was trained by worker {trained.trained_by}: model.pt is in its out_dir, not "
                      "here", stacklevel=4)
    done = TuneRecord(**{**vars(record), "plan": plan, "reasons": reasons, "assumed": written,
                         "metric": trained.metric})
    done.write(ctx.folder)
    return done
