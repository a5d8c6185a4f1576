"""``gradpilot train``: a plan (``plan.yaml`` from ``gradpilot tune``) trained from the task's initial weights on
gradpilot's engine (``fit(task, plan=...)``) — the plan's LR, batch, accumulation, epochs and schedule."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gradpilot.cli.common import TaskFile, _load, _one_line_errors, _print_json, app, console, err_console
from gradpilot.errors import GradpilotError

if TYPE_CHECKING:
    from gradpilot.train.fitting import FitResult


@app.command("train")
@_one_line_errors
def train_command(
    task_file: TaskFile = None,
    plan: Annotated[Path, typer.Option("--plan", help="the plan to train: a plan.yaml gradpilot tune wrote")] = Path(),
    out: Annotated[Path | None, typer.Option("--out", help="folder for the run's checkpoint (last.pt), its "
                                                           "metrics.csv and model.pt; the same command continues it")]
    = None,
    seed: Annotated[int, typer.Option(help="seed passed to task() and the run's data order")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Train a plan from the task's initial weights: its LR, batch, accumulation, epochs and schedule."""
    if plan == Path():
        raise GradpilotError("give the plan to train: --plan PLAN.yaml (the plan.yaml a `gradpilot tune` wrote)")
    from gradpilot.train.plan import Plan

    read = Plan.read(plan)  # a plan that cannot be read fails before torch and the task load
    if out is not None and out.exists() and not out.is_dir():
        raise GradpilotError(f"--out {out} is a file, not a folder: give a folder")
    task = _load(task_file, seed)
    from gradpilot.train.fitting import fit

    result = fit(task, plan=plan, seed=seed, checkpoint_dir=out, on_step=_lines(quiet=as_json))
    if out is not None:
        from gradpilot.train.checkpoint import save_file
        from gradpilot.train.state import trainable_state

        save_file(out / "model.pt", trainable_state(task.model))
    summary = _summary(result, read.learning_rate, out)
    if as_json:
        _print_json(summary)
    else:
        console.print(f"trained {summary['epochs']} epochs, {summary['steps']:,} steps at lr {read.learning_rate:.3g}: "
                      f"validation metric {summary['metric']:.4g} (validation loss {summary['val_loss']:.4g})",
                      highlight=False, soft_wrap=True)
        if out is not None:
            console.print(f"checkpoint: {out / 'last.pt'}\nmetrics:    {out / 'metrics.csv'}\nmodel:      "
                          f"{out / 'model.pt'}", highlight=False, soft_wrap=True)


def _summary(result: FitResult, lr: float, out: Path | None) -> dict[str, Any]:
    """What the run ended at: ``metric`` means what tune.json's ``metric`` means (the final validation metric)."""
    return {"metric": result.metric, "val_loss": result.val_losses[-1] if result.val_losses else None,
            "steps": result.steps, "epochs": result.epochs_completed, "learning_rate": lr,
            "stop_reason": result.stop_reason, "resumed_from_step": result.resumed_from_step,
            "checkpoint": None if out is None else str(out / "last.pt"),
            "metrics_log": None if out is None else str(out / "metrics.csv"),
            "model_path": None if out is None else str(out / "model.pt")}


def _lines(*, quiet: bool) -> Callable[[int, float], None] | None:
    """Progress off a terminal and on one alike: every 25th step a line on stderr (none when ``quiet``)."""
    if quiet:
        return None

    def on_step(step: int, lr: float) -> None:
        if step % 25 == 0:
            err_console.print(f"train: step {step:,}, lr {lr:.3g}", highlight=False)

    return on_step
