"""``gradpilot schedule``: the LR curve of a named schedule — or of a plan's — printed and plotted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from gradpilot import _validate
from gradpilot.cli.common import _draw, _one_line_errors, app, console
from gradpilot.errors import GradpilotError
from gradpilot.schedules.catalog import NAMES


@app.command("schedule")
@_one_line_errors
def schedule_command(
    name: Annotated[str | None, typer.Argument(help=f"one of {', '.join(NAMES)} (or give --plan)")] = None,
    steps: Annotated[int | None, typer.Option(help="optimizer steps in the run (with --plan: by default the steps "
                                                     "the tune that wrote it trained)")] = None,
    lr: Annotated[float | None, typer.Option(help="the optimizer's base LR (default 1e-3, or the plan's)")] = None,
    steps_per_epoch: Annotated[int, typer.Option(help="for schedules stepped per epoch (step, plateau)")] = 1,
    option: Annotated[
        list[str] | None, typer.Option(help="schedule option KEY=VALUE, repeatable (e.g. warmup_ratio=0.1)")
    ] = None,
    plan: Annotated[Path | None, typer.Option("--plan", help="a plan.yaml: draw its schedule")] = None,
    metrics: Annotated[
        str | None, typer.Option(help="plateau only: validation metric per epoch, comma-separated")
    ] = None,
    plot: Annotated[Path, typer.Option("--plot", help="where to write the curve (PNG)")] = Path("schedule.png"),
) -> None:
    """Print and plot the LR curve of a named schedule, or of a plan's (--plan plan.yaml)."""
    _validate.writable_file(plot, "--plot")
    name, options, lr, steps = _from_plan(plan, name, option, lr, steps) if plan is not None else \
        _named(name, option, lr, steps)
    values = _parse_metrics(metrics)
    from gradpilot import plots
    from gradpilot.schedules import builders as schedules

    with console.status(f"stepping {name} through {steps:,} steps…"):
        lrs = schedules.lr_curve(name, steps=steps, lr=lr or 1e-3, steps_per_epoch=steps_per_epoch, metrics=values,
                                 **options)
    table = Table(title=f"{name} over {steps} steps (base LR {lr or 1e-3:g})")
    table.add_column("step", justify="right")
    table.add_column("learning rate", justify="right")
    for i in sorted({0, steps - 1, *(round(i * (steps - 1) / 10) for i in range(11))}):
        table.add_row(str(i), f"{lrs[i]:.4g}")
    console.print(table)
    title = f"{name} ({', '.join(f'{k}={v}' for k, v in options.items()) or 'defaults'})"
    if not _draw(lambda: plots.plot_schedule(lrs, plot, title), plot):
        raise typer.Exit(code=2)
    console.print(f"Curve written to {plot}")


def _named(name: str | None, option: list[str] | None, lr: float | None,
           steps: int | None) -> tuple[str, dict[str, Any], float | None, int]:
    if name is None:
        raise GradpilotError(f"give a schedule's name ({', '.join(NAMES)}) or --plan PLAN.yaml")
    _validate.choice("scheduler", name, NAMES)
    if steps is None:
        raise GradpilotError("give the run's optimizer steps: --steps N")
    return name, dict(_parse_option(o) for o in option or []), lr, steps


def _from_plan(path: Path, name: str | None, option: list[str] | None, lr: float | None,
               steps: int | None) -> tuple[str, dict[str, Any], float, int]:
    """The plan's schedule, its options and its LR; the steps by default those of the tune that wrote it."""
    if name is not None or option:
        raise GradpilotError("--plan draws the plan's own schedule: leave out the name and --option")
    from gradpilot.train.plan import Plan

    read = Plan.read(path)
    scheduler, options = read.schedule()
    total = steps if steps is not None else _tuned_steps(path)
    if total is None:
        raise GradpilotError(f"give the run's optimizer steps: --steps N ({path.parent / 'tune.json'} does not say "
                             "them)")
    return scheduler, options, lr or read.learning_rate, total


def _tuned_steps(plan: Path) -> int | None:
    """The optimizer steps the plan's run took in the tune that wrote it (its ``tune.json`` beside it)."""
    record = plan.parent / "tune.json"
    try:
        return int(json.loads(record.read_text())["assumed"]["total_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


WORDS = ("decay_type", "mode")  # options whose value is a word, not a number


def _parse_option(text: str) -> tuple[str, float | int | str]:
    """KEY=VALUE: a whole number, a number, or for ``WORDS`` a word (``decay_type=linear``)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise GradpilotError(f"--option takes KEY=VALUE, got {text!r}")
    if key in WORDS:
        return key, value.strip()
    try:
        number = float(value)
    except ValueError:
        raise GradpilotError(f"--option {key} needs a number, got {value!r}") from None
    whole = number.is_integer() and "." not in value and "e" not in value.lower()
    return key, int(number) if whole else number


def _parse_metrics(metrics: str | None) -> list[float] | None:
    try:
        return None if metrics is None else [float(v) for v in metrics.split(",")]
    except ValueError:
        raise GradpilotError(f"--metrics takes numbers separated by commas, got {metrics!r}") from None
