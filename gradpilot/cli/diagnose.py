"""``gradpilot diagnose``: what went wrong in a run and what to change, from its log. Imports no torch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from gradpilot import _validate
from gradpilot.cli.common import (
    _draw,
    _escape,
    _fail,
    _one_line_errors,
    _print_json,
    app,
    console,
    err_console,
)
from gradpilot.errors import GradpilotError

if TYPE_CHECKING:
    from gradpilot.diagnosis.detectors import Diagnosis
    from gradpilot.diagnosis.history import History

QUIET = {"healthy", "insufficient_data"}  # kinds that leave the exit code at 0


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
    at its newest run; --all diagnoses each (a run that cannot be read is one error line, and the others are
    still diagnosed). Exit code 0 when the runs look healthy (or are too short to judge), 1 when something was
    found, 2 on bad input or a run that could not be read.
    """
    if every_run:
        _diagnose_all(path, as_json, plot is not None or html_page is not None)
        return
    for target, flag in ((plot, "--plot"), (html_page, "--html")):
        if target is not None:
            _validate.writable_file(target, flag)
    history, result = _read_and_diagnose(path)
    for warning in history.warnings:
        err_console.print(f"[yellow]warning:[/] {_escape(warning)}", highlight=False, soft_wrap=True)
    if as_json:
        _print_json(_as_json(history, result))
    else:
        _print_diagnosis(history.source, result)
    if not _draw_outputs(history, result, plot, html_page, say=not as_json):
        raise typer.Exit(code=2)
    if result.kinds - QUIET:
        raise typer.Exit(code=1)


def _read_and_diagnose(path: Path) -> tuple[History, Diagnosis]:
    from gradpilot.diagnosis.detectors import diagnose
    from gradpilot.diagnosis.logs import read_log

    history = read_log(path)
    return history, diagnose(history)


def _as_json(history: History, result: Diagnosis) -> dict[str, Any]:
    return {"source": history.source, "warnings": list(history.warnings), **result.to_json()}


def _draw_outputs(history: History, result: Diagnosis, plot: Path | None, page: Path | None, *, say: bool) -> bool:
    """The picture and the page, each after the findings are out; False when one could not be drawn."""
    drawn = plot is None or _draw(lambda: _plot(history, result, plot), plot)
    if plot is not None and drawn and say:
        console.print(f"Curves written to {plot}")
    paged = page is None or _draw(lambda: _page(history, result, page), page)
    if page is not None and paged and say:
        console.print(f"Page written to {page}")
    return drawn and paged


def _plot(history: History, result: Diagnosis, path: Path) -> None:
    from gradpilot import plots

    plots.plot_diagnosis(history, result, path)


def _page(history: History, result: Diagnosis, path: Path) -> None:
    from gradpilot.report import write_diagnosis_report

    write_diagnosis_report(history, result, path)


def _diagnose_all(path: Path, as_json: bool, drawing: bool) -> None:
    """``diagnose --all``: each run of a folder, oldest first."""
    from gradpilot.diagnosis.logs import find_runs

    if drawing:
        raise _fail("--all diagnoses several runs: --plot and --html draw one (give the run's own folder or file)")
    if not path.is_dir():
        raise _fail(f"--all needs a folder of runs; {path} is a file")
    found, broken, out = False, 0, []
    for run in find_runs(path):
        try:
            history, result = _read_and_diagnose(run)
        except GradpilotError as exc:  # one damaged run costs its own diagnosis, never the others'
            broken += 1
            err_console.print(f"[bold red]error:[/] {_escape(str(exc))}", highlight=False, soft_wrap=True)
            out.append({"source": str(run), "error": str(exc)})
            continue
        found = found or bool(result.kinds - QUIET)
        if as_json:
            out.append(_as_json(history, result))
        else:
            _print_diagnosis(history.source, result)
    if as_json:
        _print_json(out)
    if broken or found:
        raise typer.Exit(code=2 if broken else 1)


def _print_diagnosis(source: str, result: Diagnosis) -> None:
    table = Table(title=f"Diagnosis of {source}", show_lines=True)
    for col in ("finding", "where", "evidence", "confidence", "what to change"):
        table.add_column(col, overflow="fold")
    for f in result.findings:
        table.add_row(f.kind, f"{f.unit} {f.start:g}–{f.end:g}", f.evidence, f"{f.confidence:.0%}", f.advice)
    console.print(table)
    console.print(f"[bold]Learning rate {result.lr_verdict}.[/] {_escape(result.lr_reason)}")
