"""The ``gradpilot`` command: the console belongs here, the analysis to the library.

torch is imported inside the commands that train (never at start-up), so ``gradpilot diagnose`` and every
``--help`` start in a fraction of a second. Bad input ends in one line and exit code 2; an unexpected error
in one line and exit code 3 (``GRADPILOT_DEBUG=1`` shows its traceback); work already done is printed
before anything that may still fail (a plot) is attempted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.table import Table

from gradpilot import _cli_tune, _validate  # noqa: F401 - _cli_tune adds `tune` and `report` to the app
from gradpilot._cli_common import _draw, _dumps, _escape, _fail, _load, _one_line_errors, app, console, err_console
from gradpilot.errors import GradpilotError

if TYPE_CHECKING:
    from typing import Literal

    from gradpilot.diagnosis import Diagnosis
    from gradpilot.lr_finder import LRFinderResult
    from gradpilot.scaling import LRRule
    from gradpilot.suggest import RuleName
    from gradpilot.task import Task

RULES = ("safe-edge", "descent-edge", "valley", "steepest", "minimum/10")  # suggest.RULES, not imported
LR_RULES = ("linear", "sqrt", "none", "auto")  # gradpilot.scaling.LR_RULES
SCHEDULES = ("constant", "step", "cosine", "plateau", "onecycle", "warmup_cosine", "constant_with_warmup", "linear",
             "cosine_with_min_lr")  # schedules.BUILDERS


@app.command("find-lr")
@_one_line_errors
def find_lr_command(
    task_file: Annotated[
        Path | None, typer.Argument(help="Python file defining task(seed); omit for the built-in example")
    ] = None,
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
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from gradpilot.lr_finder import find_lr

    task = _load(task_file, seed)
    import torch

    torch.manual_seed(seed)
    with Progress(
        TextColumn("[bold]range test"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=as_json,
    ) as bar:
        job = bar.add_task("", total=num_steps)

        def tick(step: int, total: int, lr: float, loss: float) -> None:
            bar.update(job, completed=step, description=f"lr {lr:.2e}  loss {loss:.4g}")

        result = find_lr(
            task,
            train_loader=task.train_loader(seed),
            start_lr=start_lr,
            end_lr=end_lr,
            num_steps=num_steps,
            accumulation_steps=accumulation_steps,
            rule=cast("RuleName", rule),  # checked against RULES above
            family=cast("Literal['sgd', 'adaptive'] | None", family),
            progress=tick,
        )
    drawn = plot is not None and _draw(lambda: result.plot(plot), plot)
    if as_json:
        typer.echo(_dumps(_as_dict(result, task, plot if drawn else None)))
    else:
        _print_result(result, task, plot if drawn else None)
    if plot is not None and not drawn:
        raise typer.Exit(code=2)


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
    for flag, value in (
        ("--max-micro-batch", max_micro_batch),
        ("--world-size", world_size),
        ("--target", target),
        ("--batch-size", batch_size),
        ("--total-steps", total_steps),
    ):
        if value is not None:
            _validate.positive_int(flag, value)
    if lr is not None:
        _validate.positive_float("--lr", lr)
    if (lr is None) != (batch_size is None):
        raise GradpilotError("to scale the LR give both --lr and --batch-size (the effective batch it was tuned at)")
    result = scaling.plan(
        target if target is not None else max_micro_batch * world_size,
        max_micro_batch,
        world_size,
        lr=lr,
        batch_size=batch_size,
        optimizer=optimizer,
        rule=cast("LRRule", _validate.choice("--rule", rule, LR_RULES)),
        total_steps=total_steps,
    )
    if as_json:
        typer.echo(_dumps(dataclasses.asdict(result)))
        return
    table = Table(title="Batch plan")
    for col in ("micro-batch", "accumulation", "world size", "effective batch", "learning rate", "warmup"):
        table.add_column(col, justify="right")
    lr_cell = "—" if result.lr is None else f"{lr:.3g} → {result.lr:.3g} ({result.lr_rule})"
    warm = (
        "none"
        if not result.warmup_ratio
        else (
            f"{result.warmup_steps} steps" if result.warmup_steps is not None else f"{result.warmup_ratio:.1%} of steps"
        )
    )
    table.add_row(
        str(result.micro_batch_size),
        str(result.accumulation_steps),
        str(result.world_size),
        str(result.effective_batch_size),
        lr_cell,
        warm,
    )
    console.print(table)
    console.print(result.note if result.exact else f"[yellow]{result.note}[/]")


@app.command("find-batch-size")
@_one_line_errors
def find_batch_size_command(
    task_file: Annotated[
        Path | None, typer.Argument(help="Python file defining task(seed); omit for the built-in example")
    ] = None,
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

    from gradpilot import batch_size

    task = _load(task_file, seed)
    torch.manual_seed(seed)
    data, _ = task.dataset()
    with console.status("trying batch sizes…") as status:

        def tick(trial: batch_size.Trial) -> None:
            status.update(f"batch {trial.batch_size}: {'fits' if trial.fits else 'does not fit'}")

        result = batch_size.find_batch_size(
            task,
            start=start,
            max_batch_size=max_batch_size,
            max_memory=None if max_memory_mib is None else int(max_memory_mib * 2**20),
            progress=tick,
        )
        noise, noise_error = None, None
        if noise_scale:  # after the search: a noise scale that cannot be measured must not cost its result
            status.update("estimating the gradient noise scale…")
            big = min(len(data), max(result.batch_size, 16))  # type: ignore[arg-type]
            try:
                noise = batch_size.estimate_noise_scale(task, small_batch=max(1, big // 16), big_batch=big, seed=seed)
            except GradpilotError as exc:
                noise_error = str(exc)
    table = Table(title=f"Batch sizes tried on {task.name}")
    for col in ("batch", "fits", "samples/s", "peak memory (MiB)", "why not"):
        table.add_column(col, justify="right" if col != "why not" else "left")
    for t in result.trials:
        table.add_row(
            str(t.batch_size),
            "yes" if t.fits else "no",
            "" if t.samples_per_second is None else f"{t.samples_per_second:,.0f}",
            "" if t.peak_memory is None else f"{t.peak_memory / 2**20:,.1f}",
            t.error or "",
        )
    console.print(table)
    console.print(
        f"[bold]Largest micro-batch that fits: {result.batch_size}[/]" + (f" ({result.limit})" if result.limit else "")
    )
    if noise_error is not None:
        err_console.print(f"[yellow]warning:[/] no gradient noise scale: {_escape(noise_error)}", soft_wrap=True)
    if noise is not None:
        console.print(
            f"Gradient noise scale B_simple ≈ {noise.b_simple:,.0f}: an effective batch near "
            f"{noise.recommended_batch_size} uses data and steps efficiently "
            f"(`gradpilot plan --target {noise.recommended_batch_size} --max-micro-batch {result.batch_size}`)."
        )


def _parse_option(text: str) -> tuple[str, float | int]:
    key, sep, value = text.partition("=")
    if not sep:
        raise GradpilotError(f"--option takes KEY=VALUE, got {text!r}")
    try:
        number = float(value)
    except ValueError:
        raise GradpilotError(f"--option {key} needs a number, got {value!r}") from None
    return key, int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number


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
    try:
        values = None if metrics is None else [float(v) for v in metrics.split(",")]
    except ValueError:
        raise GradpilotError(f"--metrics takes numbers separated by commas, got {metrics!r}") from None
    from gradpilot import plots, schedules

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


@app.command("diagnose")
@_one_line_errors
def diagnose_command(
    path: Annotated[
        Path, typer.Argument(help="a log file or run folder: CSV, JSON lines, TensorBoard, trainer_state.json")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="print the findings as JSON")] = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="write the curves with the findings marked (PNG)")] = None,
    html_page: Annotated[
        Path | None, typer.Option("--html", help="write a self-contained page: curves, findings, verdict (HTML)")
    ] = None,
    every_run: Annotated[
        bool, typer.Option("--all", help="diagnose every run in the folder (default: the newest only)")
    ] = False,
) -> None:
    """Say what went wrong in a run and what to change, from its log.

    A folder holding several runs (lightning_logs/version_N, a Trainer's checkpoint-N, TensorBoard runs) is read
    at its newest run; --all diagnoses each. Exit code 0 when the runs look healthy (or are too short to
    judge), 1 when something was found, 2 on bad input.
    """
    from gradpilot.diagnosis import diagnose
    from gradpilot.logs import read_log

    if every_run:
        _diagnose_all(path, as_json, plot is not None or html_page is not None)
        return
    for target, flag in ((plot, "--plot"), (html_page, "--html")):
        if target is not None:
            _validate.writable_file(target, flag)
    history = read_log(path)
    result = diagnose(history)
    for warning in history.warnings:
        err_console.print(f"[yellow]warning:[/] {_escape(warning)}", highlight=False, soft_wrap=True)
    if as_json:
        typer.echo(_dumps({"source": history.source, "warnings": list(history.warnings), **result.to_json()}))
    else:
        _print_diagnosis(history.source, result)
    drawn = plot is None or _draw(lambda: _plot_diagnosis(history, result, plot), plot)
    if plot is not None and drawn and not as_json:
        console.print(f"Curves written to {plot}")
    paged = html_page is None or _draw(lambda: _diagnosis_page(history, result, html_page), html_page)
    if html_page is not None and paged and not as_json:
        console.print(f"Page written to {html_page}")
    if not (drawn and paged):
        raise typer.Exit(code=2)
    if result.kinds - {"healthy", "insufficient_data"}:
        raise typer.Exit(code=1)


def _diagnose_all(path: Path, as_json: bool, drawing: bool) -> None:
    """``diagnose --all``: each run of a folder, oldest first."""
    from gradpilot.diagnosis import diagnose
    from gradpilot.logs import find_runs, read_log

    if drawing:
        raise _fail("--all diagnoses several runs: --plot and --html draw one (give the run's own folder or file)")
    if not path.is_dir():
        raise _fail(f"--all needs a folder of runs; {path} is a file")
    found, out = False, []
    for run in find_runs(path):
        history = read_log(run)
        result = diagnose(history)
        found = found or bool(result.kinds - {"healthy", "insufficient_data"})
        if as_json:
            out.append({"source": history.source, "warnings": list(history.warnings), **result.to_json()})
        else:
            _print_diagnosis(history.source, result)
    if as_json:
        typer.echo(_dumps(out))
    if found:
        raise typer.Exit(code=1)


def _plot_diagnosis(history: Any, result: Diagnosis, plot: Path) -> None:
    from gradpilot import plots

    plots.plot_diagnosis(history, result, plot)


def _diagnosis_page(history: Any, result: Diagnosis, path: Path) -> None:
    from gradpilot.report import write_diagnosis_report

    write_diagnosis_report(history, result, path)


def _print_diagnosis(source: str, result: Diagnosis) -> None:
    table = Table(title=f"Diagnosis of {source}", show_lines=True)
    for col in ("finding", "where", "evidence", "confidence", "what to change"):
        table.add_column(col, overflow="fold")
    for f in result.findings:
        table.add_row(f.kind, f"{f.unit} {f.start:g}–{f.end:g}", f.evidence, f"{f.confidence:.0%}", f.advice)
    console.print(table)
    console.print(f"[bold]Learning rate {result.lr_verdict}.[/] {_escape(result.lr_reason)}")


def main() -> None:
    """The console entry point: as ``app()``, with a usage mistake (an unknown option, a value of the wrong
    type) told in one line like every other error."""
    import sys

    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        code = 1
    except Exception as exc:
        if not any(c.__name__ == "UsageError" for c in type(exc).__mro__):  # the click error typer raises
            raise
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:  # plain `gradpilot`: the help
            typer.echo(ctx.get_help())
            sys.exit(0)
        command = getattr(ctx, "command_path", "gradpilot")
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err_console.print(
            f"[bold red]error:[/] {_escape(' '.join(message.split()))} (see `{command} --help`)",
            highlight=False,
            soft_wrap=True,
        )
        code = 2
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
