"""``gradpilot tune`` and ``gradpilot report``: the whole workflow, and the page that shows it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gradpilot import _validate
from gradpilot.cli.common import (
    TaskFile,
    _fail,
    _load,
    _one_line_errors,
    _print_json,
    app,
    console,
    err_console,
)
from gradpilot.errors import GradpilotError

if TYPE_CHECKING:
    from gradpilot.tuning.halving import RungBackend


@app.command("tune")
@_one_line_errors
def tune_command(
    task_file: TaskFile = None,
    budget: Annotated[
        float | None, typer.Option(help="how much tune may spend, in runs of the task as written (wall time and "
                                        "items; default 2)")
    ] = None,
    time_budget: Annotated[
        str | None, typer.Option("--time-budget", help="how much tune may spend, as a duration: 90s, 30m, 2h")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="folder for plan.yaml, model.pt, tune.json and the trials")] = Path(
        "gradpilot-tune"
    ),
    fix: Annotated[
        list[str] | None,
        typer.Option("--fix", help="keep a plan value, e.g. --fix batch_size=64 --fix epochs=10 (repeatable)"),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna storage URL shared by workers, e.g. postgresql://user@host/db (default: a file in "
                     "--out)"),
    ] = None,
    study: Annotated[
        str, typer.Option(help="study name: tune processes with the same --storage and --study share the work")
    ] = "gradpilot",
    n_jobs: Annotated[int, typer.Option("--n-jobs", help="worker processes on this machine (journal file)")] = 1,
    backend: Annotated[str, typer.Option(help="where the short runs go: optuna (these processes) or ray")] = "optuna",
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (auto: this machine's); default: start a local Ray")
    ] = None,
    cooldown: Annotated[float, typer.Option(help="share of each short run spent decaying the LR before scoring")] = 0.2,
    seed: Annotated[int, typer.Option(help="seed passed to task() and to every run")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan and figures as JSON")] = False,
) -> None:
    """Tune LR, batch, accumulation, epochs and schedule within a budget; write the plan, the model and a record."""
    fixed = dict(_key_value(item) for item in fix or [])
    from gradpilot.tuning.fixed import Fixed

    Fixed.parse(fixed)  # a wrong name fails before torch and the task load
    if budget is not None and time_budget is not None:
        raise GradpilotError("give --budget (runs) or --time-budget (a duration), not both")
    if budget is not None:
        _validate.positive_float("--budget", budget)
    _validate.choice("--backend", backend, ("optuna", "ray"))
    if ray_address is not None and backend != "ray":
        raise GradpilotError("--ray-address needs --backend ray")
    from gradpilot.tuning.budget import parse_duration

    seconds = parse_duration(time_budget) if time_budget is not None else None  # before torch loads
    from gradpilot.tuning import tune
    from gradpilot.tuning.driver import DEFAULT_BUDGET
    from gradpilot.tuning.view import budget_bar, summary

    task = _load(task_file, seed)
    runner = _backend(backend, ray_address)
    runs = None if seconds is not None else budget if budget is not None else DEFAULT_BUDGET
    with budget_bar(err_console, runs, disable=as_json) as progress:
        result = tune(task, budget=budget, time_budget=seconds, out_dir=out, fixed=fixed, storage=storage,
                      study=study, n_jobs=n_jobs, backend=runner, seed=seed, cooldown=cooldown, progress=progress)
    if as_json:
        _print_json({"plan": result.plan, "spent_runs": result.spent, "budget_runs": result.budget,
                     "spent_item_runs": result.spent_items, "seconds": result.seconds,
                     "wall_seconds": result.wall_seconds, "process_seconds": result.process_seconds,
                     "run_seconds": result.run_seconds, "metric": result.metric, "plan_path": str(result.plan_path),
                     "model_path": str(result.model_path), "record_path": str(result.record_path),
                     "report_path": str(result.report_path)})
    else:
        summary(result, console)


def _backend(name: str, address: str | None) -> RungBackend | None:
    """What runs the search's short runs: these processes (None), or Ray Tune."""
    if name != "ray":
        return None
    from gradpilot.integrations.ray_tune import RayBackend

    return RayBackend(address)


def _key_value(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise GradpilotError(f"--fix takes NAME=VALUE (e.g. --fix batch_size=64), got {item!r}")
    return name.strip(), value.strip()


@app.command("report")
@_one_line_errors
def report_command(
    folder: Annotated[Path, typer.Argument(help="the folder a `gradpilot tune` wrote (its --out)")],
) -> None:
    """Rebuild FOLDER/report.html from FOLDER/tune.json: every stage's curves, trials and decisions on one page."""
    from gradpilot.report import write_tune_report

    if not folder.is_dir():
        raise _fail(f"{folder} is not a folder: give the --out folder of a `gradpilot tune`")
    console.print(f"Report written to {write_tune_report(folder)}", soft_wrap=True, highlight=False)
