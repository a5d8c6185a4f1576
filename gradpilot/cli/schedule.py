"""``gradpilot schedule``: the LR curve of a named schedule, printed and plotted."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gradpilot import _validate
from gradpilot.cli.common import _draw, _one_line_errors, app, console
from gradpilot.errors import GradpilotError

SCHEDULES = ("constant", "step", "cosine", "plateau", "onecycle", "warmup_cosine", "constant_with_warmup", "linear",
             "cosine_with_min_lr")  # schedules.BUILDERS, not imported (torch-free)


@app.command("schedule")
@_one_line_errors
def schedule_command(
    name: Annotated[str, typer.Argument(help=f"one of {', '.join(SCHEDULES)}")],
    steps: Annotated[int, typer.Option(help="optimizer steps in the run")],
    lr: Annotated[float, typer.Option(help="the optimizer's base LR")] = 1e-3,
    steps_per_epoch: Annotated[int, typer.Option(help="for schedules stepped per epoch (step, plateau)")] = 1,
    option: Annotated[
        list[str] | None, typer.Option(help="schedule option KEY=VALUE, repeatable (e.g. warmup_ratio=0.1)")
    ] = None,
    metrics: Annotated[
        str | None, typer.Option(help="plateau only: validation metric per epoch, comma-separated")
    ] = None,
    plot: Annotated[Path, typer.Option("--plot", help="where to write the curve (PNG)")] = Path("schedule.png"),
) -> None:
    """Print and plot the LR curve of a named schedule."""
    _validate.choice("scheduler", name, SCHEDULES)
    _validate.writable_file(plot, "--plot")
    options = dict(_parse_option(o) for o in option or [])
    values = _parse_metrics(metrics)
    from gradpilot import plots
    from gradpilot.schedules import builders as schedules

    with console.status(f"stepping {name} through {steps:,} steps…"):
        lrs = schedules.lr_curve(name, steps=steps, lr=lr, steps_per_epoch=steps_per_epoch, metrics=values, **options)
    table = Table(title=f"{name} over {steps} steps (base LR {lr:g})")
    table.add_column("step", justify="right")
    table.add_column("learning rate", justify="right")
    for i in sorted({0, steps - 1, *(round(i * (steps - 1) / 10) for i in range(11))}):
        table.add_row(str(i), f"{lrs[i]:.4g}")
    console.print(table)
    title = f"{name} ({', '.join(f'{k}={v}' for k, v in options.items()) or 'defaults'})"
    if not _draw(lambda: plots.plot_schedule(lrs, plot, title), plot):
        raise typer.Exit(code=2)
    console.print(f"Curve written to {plot}")


def _parse_option(text: str) -> tuple[str, float | int]:
    key, sep, value = text.partition("=")
    if not sep:
        raise GradpilotError(f"--option takes KEY=VALUE, got {text!r}")
    try:
        number = float(value)
    except ValueError:
        raise GradpilotError(f"--option {key} needs a number, got {value!r}") from None
    return key, int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number


def _parse_metrics(metrics: str | None) -> list[float] | None:
    try:
        return None if metrics is None else [float(v) for v in metrics.split(",")]
    except ValueError:
        raise GradpilotError(f"--metrics takes numbers separated by commas, got {metrics!r}") from None
