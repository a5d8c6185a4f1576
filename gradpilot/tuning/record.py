"""A tune's folder: the settings a resume must match, the checks that keep one folder to one tune, the weights
every run starts from, and the outputs (``plan.yaml``, ``model.pt``, ``tune.json``, ``report.html``)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from gradpilot._files import write_json
from gradpilot.errors import GradpilotError
from gradpilot.train import checkpoint as _checkpoint
from gradpilot.train import fingerprint as _fingerprint
from gradpilot.train.task import Task
from gradpilot.tuning import plan as hf_plan
from gradpilot.tuning import queue
from gradpilot.tuning.context import Context
from gradpilot.tuning.state import Stage, Trained

NEW_FOLDER = "use a new out_dir (or delete this one) to tune afresh"
OUTPUTS = ("tune.json", "plan.yaml", "model.pt", "report.html", "runs/initial.pt")


def settings(ctx: Context) -> dict[str, Any]:
    """What a tune folder's record must match for the same command to continue it: the arguments, and what
    ``fit``'s fingerprint holds of the task (optimizer settings, data, model, metric's direction, clipping)."""
    t = ctx.task
    out = {"task": t.name, "storage": queue.describe(ctx.storage), "study": ctx.prefix,
           "budget": ctx.budget, "time_budget": ctx.time_budget, "fixed": ctx.fixed, "seed": ctx.seed,
           "cooldown": ctx.cooldown, "train_items": ctx.train_items, "epochs": t.epochs, "batch_size": t.batch_size,
           "lr": t.lr, "higher_is_better": t.higher_is_better, "max_grad_norm": t.max_grad_norm,
           "precision": t.precision, "metric": _name(t.metric), "loss": _name(t.loss_fn), "step_fn": _name(t.step_fn),
           "runner": _name(t.runner), "model": _fingerprint.model_layout(t.model),
           "train_data": _fingerprint.data_digest(t.dataset()[0]), "val_data": _fingerprint.data_digest(t.val_data),
           "initial_weights": _fingerprint.weights_digest(ctx.initial),
           **_fingerprint.optimizer_settings(t.make_optimizer())}
    plain: dict[str, Any] = json.loads(json.dumps(out))
    return plain


def _name(fn: Any) -> str | None:
    """A function by its name; a loss module by its class and its plain settings (``label_smoothing=0.1``)."""
    if fn is None:
        return None
    if hasattr(fn, "__qualname__"):
        return str(fn.__qualname__)
    plain = {k: v for k, v in sorted(vars(fn).items()) if not k.startswith("_") and k != "training" and
             isinstance(v, (bool, int, float, str, type(None)))}
    return type(fn).__qualname__ + "(" + ", ".join(f"{k}={v!r}" for k, v in plain.items()) + ")"


def check_outputs(out: Path) -> None:
    for name in OUTPUTS:
        if (out / name).is_dir():  # found now, not after the whole tune
            raise GradpilotError(f"{out / name} is a folder, where tune writes a file: move it away, or give another "
                                 "out_dir")


def check_folder(ctx: Context, *, fresh_storage: bool) -> None:
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
                             "trials.journal deleted?): use a new out_dir to tune afresh")


def check_shared_settings(ctx: Context) -> None:
    """Workers sharing a study must tune the same thing the same way: the first one's settings rule."""
    mine = ctx.settings
    first = queue.once(ctx.storage, f"{ctx.prefix}:settings", lambda: mine)
    _fingerprint.check_same(first, mine, what=f"study {ctx.prefix!r} in this storage was started",
                            remedy="use another --study, or the same arguments and task")


def _check_same_start(ctx: Context, record: dict[str, Any]) -> None:
    """The task's model must come with the weights the folder's tune started from (runs/initial.pt is read over
    them, so a model initialised otherwise would silently be tuned from the old weights). It may also hold
    those very weights, or the ones tune trained (the same Task object again, in one Python session)."""
    recorded = record.get("task_weights")
    if not recorded or ctx.task_weights in (recorded, _fingerprint.weights_digest(ctx.initial)):
        return
    model = ctx.out / "model.pt"
    if model.exists() and ctx.task_weights == _fingerprint.weights_digest(_checkpoint.load_file(model, NEW_FOLDER)):
        return
    raise GradpilotError(f"{ctx.out} holds a tune of a model that started from other weights (task_weights: "
                         f"{recorded} → {ctx.task_weights}): the task's model is initialised differently now; build "
                         "it as before (the same seed and init) to continue, or use a new out_dir")


def train_length(task: Task) -> int:
    dataset, _ = task.dataset()
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise GradpilotError("tune needs a training set with a length (a map-style Dataset): its budget is counted "
                             "in passes over it") from None


def initial_weights(task: Task, path: Path) -> dict[str, torch.Tensor]:
    """The weights every run starts from, kept in DIR so a resumed tune starts its runs from the same ones."""
    if path.exists():
        state: dict[str, torch.Tensor] = _checkpoint.load_file(path, NEW_FOLDER)
        try:
            task.model.load_state_dict(state)
        except RuntimeError:
            raise GradpilotError(f"{path} holds another model's weights: use a new out_dir for this task") from None
        return state
    state = {k: v.detach().clone() for k, v in task.model.state_dict().items()}
    _checkpoint.save_file(path, state)
    return state


def write_outputs(ctx: Context, stages: tuple[Stage, ...], record: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """plan.yaml, model.pt and the finished tune.json; the task's model holds the best weights tune trained
    (where another machine's worker trained them, model.pt is on that machine: the record says where). The
    plan and the trained model's validation metric."""
    plan, reasons = hf_plan.plan(ctx.decided, ctx.task, stages)
    hf_plan.write_yaml(plan, reasons, ctx.out / "plan.yaml", header=f"gradpilot tune plan for {ctx.task.name}")
    trained: Trained = ctx.decided.need("schedule")
    weights = ctx.out / "runs" / trained.model_file
    if weights.exists():
        best: dict[str, torch.Tensor] = _checkpoint.load_file(weights, NEW_FOLDER)
        ctx.task.model.load_state_dict(best)
        _checkpoint.save_file(ctx.out / "model.pt", best)
    else:
        warnings.warn(f"the final run was trained by worker {trained.trained_by}: model.pt is in its out_dir, not "
                      "here", stacklevel=4)
    metric = trained.metric
    if not math.isfinite(metric):
        warnings.warn("the validation metric of the model tune trained is not finite (NaN): every choice tune made "
                      "compared NaNs; check Task.metric on the validation data", stacklevel=4)
    record.update(plan=plan, reasons=reasons, budget_runs=ctx.budget_runs, budget_seconds=ctx.budget_seconds,
                  metric=metric)
    write_json(ctx.out / "tune.json", record)
    return plan, metric
