"""``gradpilot plan`` and ``gradpilot find-batch-size``: the batch a run can take, and the LR that goes with it."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.table import Table

from gradpilot import _validate
from gradpilot.cli.common import (
    TaskFile,
    _escape,
    _load,
    _one_line_errors,
    _print_json,
    app,
    console,
    err_console,
)
from gradpilot.errors import GradpilotError

if TYPE_CHECKING:
    from rich.status import Status

    from gradpilot.batch.results import BatchSizeResult, NoiseScaleResult
    from gradpilot.scaling import BatchPlan, LRRule
    from gradpilot.train.task import Task

LR_RULES = ("linear", "sqrt", "none", "auto")  # gradpilot.scaling.LR_RULES


@app.command("plan")
@_one_line_errors
def plan_command(
    lr: Annotated[float | None, typer.Option(help="the LR tuned at --batch-size")] = None,
    batch_size: Annotated[int | None, typer.Option(help="the effective batch that LR was tuned at")] = None,
    optimizer: Annotated[str, typer.Option(help="optimizer name: picks linear (SGD) or sqrt (Adam family)")] = "adamw",
    target: Annotated[
        int | None, typer.Option(help="effective batch to reach (default: max micro-batch × world size)")
    ] = None,
    max_micro_batch: Annotated[int | None, typer.Option(help="largest micro-batch that fits on one device")] = None,
    world_size: Annotated[int, typer.Option(help="data-parallel processes")] = 1,
    rule: Annotated[str, typer.Option(help="LR rule: auto, linear, sqrt, none")] = "auto",
    total_steps: Annotated[int | None, typer.Option(help="optimizer steps in the run, to size the warmup")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
) -> None:
    """Micro-batch, accumulation steps, effective batch, LR and warmup for a target batch."""
    from gradpilot import scaling

    if max_micro_batch is None:
        raise GradpilotError(
            "give --max-micro-batch, the largest micro-batch that fits (`gradpilot find-batch-size` measures it)"
        )
    _check_plan_numbers(lr, batch_size, max_micro_batch=max_micro_batch, world_size=world_size, target=target,
                        total_steps=total_steps)
    result = scaling.plan(
        target if target is not None else max_micro_batch * world_size, max_micro_batch, world_size, lr=lr,
        batch_size=batch_size, optimizer=optimizer, rule=cast("LRRule", _validate.choice("--rule", rule, LR_RULES)),
        total_steps=total_steps,
    )
    if as_json:
        _print_json(dataclasses.asdict(result))
    else:
        _print_plan(result, lr)


def _check_plan_numbers(lr: float | None, batch_size: int | None, **counts: int | None) -> None:
    for name, value in {**counts, "batch_size": batch_size}.items():
        if value is not None:
            _validate.positive_int("--" + name.replace("_", "-"), value)
    if lr is not None:
        _validate.positive_float("--lr", lr)
    if (lr is None) != (batch_size is None):
        raise GradpilotError("to scale the LR give both --lr and --batch-size (the effective batch it was tuned at)")


def _print_plan(result: BatchPlan, lr: float | None) -> None:
    table = Table(title="Batch plan")
    for col in ("micro-batch", "accumulation", "world size", "effective batch", "learning rate", "warmup"):
        table.add_column(col, justify="right")
    lr_cell = "—" if result.lr is None else f"{lr:.3g} → {result.lr:.3g} ({result.lr_rule})"
    if not result.warmup_ratio:
        warm = "none"
    elif result.warmup_steps is not None:
        warm = f"{result.warmup_steps} steps"
    else:
        warm = f"{result.warmup_ratio:.1%} of steps"
    table.add_row(str(result.micro_batch_size), str(result.accumulation_steps), str(result.world_size),
                  str(result.effective_batch_size), lr_cell, warm)
    console.print(table)
    console.print(result.note if result.exact else f"[yellow]{result.note}[/]")


@app.command("find-batch-size")
@_one_line_errors
def find_batch_size_command(
    task_file: TaskFile = None,
    max_memory_mib: Annotated[
        float | None,
        typer.Option("--max-memory-mib", help="memory budget per trial (on CPU: default half the available memory)"),
    ] = None,
    max_batch_size: Annotated[
        int | None, typer.Option(help="stop doubling here (never past the dataset's size)")
    ] = None,
    start: Annotated[int, typer.Option(help="first size tried")] = 1,
    noise_scale: Annotated[
        bool, typer.Option("--noise-scale/--no-noise-scale", help="also estimate the critical batch")
    ] = True,
    seed: Annotated[int, typer.Option(help="seed passed to task() and torch")] = 0,
) -> None:
    """The largest micro-batch that fits (OOM-safe), its throughput, and the batch the gradient noise suggests."""
    if max_memory_mib is not None:
        _validate.positive_float("--max-memory-mib", max_memory_mib)
    for flag, value in (("--max-batch-size", max_batch_size), ("--start", start)):
        if value is not None:
            _validate.positive_int(flag, value)
    import torch

    from gradpilot.batch import finder as batch_size

    task = _load(task_file, seed)
    torch.manual_seed(seed)
    with console.status("trying batch sizes…") as status:
        result = batch_size.find_batch_size(
            task, start=start, max_batch_size=max_batch_size,
            max_memory=None if max_memory_mib is None else int(max_memory_mib * 2**20),
            progress=lambda t: status.update(f"batch {t.batch_size}: {'fits' if t.fits else 'does not fit'}"),
        )
        noise, noise_error = _noise_scale(task, result, seed, status) if noise_scale else (None, None)
    _print_batches(task, result, noise, noise_error)


def _noise_scale(task: Task, found: BatchSizeResult, seed: int,
                 status: Status) -> tuple[NoiseScaleResult | None, str | None]:
    """After the search: a noise scale that cannot be measured costs a warning, never the search's result."""
    from gradpilot.batch import finder as batch_size

    status.update("estimating the gradient noise scale…")
    data, _ = task.dataset()
    big = min(len(data), max(found.batch_size, 16))  # type: ignore[arg-type]
    try:
        return batch_size.estimate_noise_scale(task, small_batch=max(1, big // 16), big_batch=big, seed=seed), None
    except GradpilotError as exc:
        return None, str(exc)


def _print_batches(task: Task, result: BatchSizeResult, noise: NoiseScaleResult | None,
                   noise_error: str | None) -> None:
    table = Table(title=f"Batch sizes tried on {task.name}")
    for col in ("batch", "fits", "samples/s", "peak memory (MiB)", "why not"):
        table.add_column(col, justify="right" if col != "why not" else "left")
    for t in result.trials:
        table.add_row(str(t.batch_size), "yes" if t.fits else "no",
                      "" if t.samples_per_second is None else f"{t.samples_per_second:,.0f}",
                      "" if t.peak_memory is None else f"{t.peak_memory / 2**20:,.1f}", t.error or "")
    console.print(table)
    limit = f" ({result.limit})" if result.limit else ""
    console.print(f"[bold]Largest micro-batch that fits: {result.batch_size}[/]{limit}")
    if noise_error is not None:
        err_console.print(f"[yellow]warning:[/] no gradient noise scale: {_escape(noise_error)}", soft_wrap=True)
    if noise is not None:
        console.print(
            f"Gradient noise scale B_simple ≈ {noise.b_simple:,.0f}: an effective batch near "
            f"{noise.recommended_batch_size} uses data and steps efficiently "
            f"(`gradpilot plan --target {noise.recommended_batch_size} --max-micro-batch {result.batch_size}`)."
        )
