"""The ``gradpilot`` command: the console belongs here, the analysis to the library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from gradpilot import suggest
from gradpilot.errors import GradpilotError
from gradpilot.examples import example_task
from gradpilot.lr_finder import LRFinderResult, find_lr
from gradpilot.task import Task, load_task

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Learning rate, batch size, accumulation, epochs and schedules for PyTorch, measured.")
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Learning rate, batch size, accumulation, epochs and schedules for PyTorch, measured."""


def _load(task_file: Path | None, seed: int) -> Task:
    return example_task(seed) if task_file is None else load_task(task_file, seed=seed)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@app.command("find-lr")
def find_lr_command(
    task_file: Annotated[Optional[Path], typer.Argument(help="Python file defining task(seed); omit for the built-in example")] = None,
    start_lr: Annotated[float, typer.Option(help="first LR of the sweep")] = 1e-7,
    end_lr: Annotated[float, typer.Option(help="last LR of the sweep")] = 10.0,
    num_steps: Annotated[int, typer.Option(help="optimizer steps in the sweep")] = 100,
    accumulation_steps: Annotated[int, typer.Option(help="micro-batches per step")] = 1,
    rule: Annotated[str, typer.Option(help=f"suggestion rule: {', '.join(suggest.RULES)}")] = suggest.DEFAULT_RULE,
    seed: Annotated[int, typer.Option(help="seed passed to task() and torch")] = 0,
    plot: Annotated[Path, typer.Option("--plot", help="where to write the curve (PNG)")] = Path("lr_find.png"),
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON instead of a table")] = False,
) -> None:
    """Run an LR range test on a task and suggest a learning rate."""
    try:
        task = _load(task_file, seed)
        torch.manual_seed(seed)
        with Progress(TextColumn("[bold]range test"), BarColumn(), TextColumn("{task.description}"),
                      TimeRemainingColumn(), console=err_console, transient=True, disable=as_json) as bar:
            job = bar.add_task("", total=num_steps)

            def tick(step: int, total: int, lr: float, loss: float) -> None:
                bar.update(job, completed=step, description=f"lr {lr:.2e}  loss {loss:.4g}")

            result = find_lr(task.model, task.make_optimizer(), task.loss_fn, task.train_loader(seed),
                             start_lr=start_lr, end_lr=end_lr, num_steps=num_steps,
                             accumulation_steps=accumulation_steps, rule=rule, progress=tick)
        result.plot(plot)
    except GradpilotError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(_as_dict(result, task, plot)))
    else:
        _print_result(result, task, plot)


def _as_dict(result: LRFinderResult, task: Task, plot: Path) -> dict[str, object]:
    return {"task": task.name, "suggestion": result.suggestion, "rule": result.rule,
            "alternatives": result.alternatives, "steps": len(result.lrs), "stop_reason": result.stop_reason,
            "plot": str(plot)}


def _print_result(result: LRFinderResult, task: Task, plot: Path) -> None:
    table = Table(title=f"LR range test on {task.name} ({task.optimizer_name})")
    table.add_column("rule")
    table.add_column("learning rate", justify="right")
    for name, lr in result.alternatives.items():
        mark = " ← suggested" if name == result.rule else ""
        table.add_row(name + mark, f"{lr:.3g}", style="bold green" if mark else None)
    console.print(table)
    console.print(f"{len(result.lrs)} steps, {result.stop_reason}. Curve written to {plot}")
    console.print(f"[bold]Suggested learning rate: {result.suggestion:.3g}[/]")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
