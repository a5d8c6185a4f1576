"""``gradpilot find-lr``: an LR range test on a task, its suggestion, interval and confidence."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.table import Table

from gradpilot import _validate
from gradpilot.cli.common import (
    TaskFile,
    _draw,
    _load,
    _one_line_errors,
    _print_json,
    app,
    console,
    err_console,
)
from gradpilot.lr import suggest

if TYPE_CHECKING:
    from typing import Literal

    from gradpilot.lr.range_test import LRFinderResult
    from gradpilot.lr.suggest import RuleName
    from gradpilot.train.task import Task

RULES = tuple(suggest.RULES)  # the library's registry (NumPy only: no torch at start-up)


@app.command("find-lr")
@_one_line_errors
def find_lr_command(
    task_file: TaskFile = None,
    start_lr: Annotated[float, typer.Option(help="first LR of the sweep")] = 1e-7,
    end_lr: Annotated[float, typer.Option(help="last LR of the sweep")] = 10.0,
    num_steps: Annotated[int, typer.Option(help="optimizer steps in the sweep")] = 100,
    accumulation_steps: Annotated[int, typer.Option(help="micro-batches per step")] = 1,
    rule: Annotated[str, typer.Option(help=f"suggestion rule: {', '.join(RULES)}")] = RULES[0],
    family: Annotated[
        str | None, typer.Option(help="how the optimizer steps: sgd or adaptive (default: read off its class)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed passed to task() and torch")] = 0,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="where to write the curve (PNG; default lr_find.png, none with --json)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON instead of a table")] = False,
) -> None:
    """Run an LR range test on a task and suggest a learning rate."""
    plot = plot if plot is not None or as_json else Path("lr_find.png")
    if plot is not None:
        _validate.writable_file(plot, "--plot")
    _validate.choice("rule", rule, RULES)
    if family is not None:
        _validate.choice("--family", family, ("sgd", "adaptive"))
    task = _load(task_file, seed)
    result = _range_test(task, seed, quiet=as_json, start_lr=start_lr, end_lr=end_lr, num_steps=num_steps,
                         accumulation_steps=accumulation_steps, rule=cast("RuleName", rule),
                         family=cast("Literal['sgd', 'adaptive'] | None", family))
    drawn = plot is not None and _draw(lambda: result.plot(plot), plot)
    if as_json:
        _print_json(_as_dict(result, task, plot if drawn else None))
    else:
        _print_result(result, task, plot if drawn else None)
    if plot is not None and not drawn:
        raise typer.Exit(code=2)


def _range_test(task: Task, seed: int, *, quiet: bool, start_lr: float, end_lr: float, num_steps: int,
                accumulation_steps: int, rule: RuleName, family: Literal["sgd", "adaptive"] | None) -> LRFinderResult:
    """``find_lr`` on the task under a progress bar on stderr (none when ``quiet``)."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from gradpilot.lr.range_test import find_lr

    torch.manual_seed(seed)
    with Progress(TextColumn("[bold]range test"), BarColumn(), TextColumn("{task.description}"),
                  TimeRemainingColumn(), console=err_console, transient=True, disable=quiet) as bar:
        job = bar.add_task("", total=num_steps)

        def tick(step: int, _total: int, lr: float, loss: float) -> None:
            bar.update(job, completed=step, description=f"lr {lr:.2e}  loss {loss:.4g}")

        return find_lr(task, train_loader=task.train_loader(seed), start_lr=start_lr, end_lr=end_lr,
                       num_steps=num_steps, accumulation_steps=accumulation_steps, rule=rule, family=family,
                       progress=tick)


def _as_dict(result: LRFinderResult, task: Task, plot: Path | None) -> dict[str, object]:
    return {
        "task": task.name,
        "suggestion": result.suggestion,
        "rule": result.rule,
        "interval": list(result.interval),
        "confidence": result.confidence,
        "caveat": result.caveat,
        "edge": result.edge,
        "alternatives": result.alternatives,
        "steps": len(result.lrs),
        "stop_reason": result.stop_reason,
        "plot": None if plot is None else str(plot),
    }


def _print_result(result: LRFinderResult, task: Task, plot: Path | None) -> None:
    table = Table(title=f"LR range test on {task.name} ({task.optimizer_name})")
    table.add_column("rule")
    table.add_column("learning rate", justify="right")
    for name, lr in result.alternatives.items():
        mark = " ← suggested" if name == result.rule else ""
        table.add_row(name + mark, f"{lr:.3g}", style="bold green" if mark else None)
    console.print(table)
    console.print(f"{len(result.lrs)} steps, {result.stop_reason}." + (f" Curve written to {plot}" if plot else ""))
    console.print(f"[bold]Suggested learning rate: {result.suggestion:.3g}[/] — the curve supports "
                  f"{result.interval[0]:.3g} to {result.interval[1]:.3g}, confidence {result.confidence:.2f}")
    if result.caveat:
        console.print(f"Low confidence: {result.caveat}. Check the pick with short runs: gradpilot tune")
