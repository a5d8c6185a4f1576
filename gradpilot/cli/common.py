"""What every ``gradpilot`` command shares: the app, the consoles, one-line errors, loading a task file."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from gradpilot.errors import GradpilotError, describe, first_line

if TYPE_CHECKING:
    from gradpilot.train.task import Task

def _task_file(path: Path | None) -> Path | None:
    """A task file given on the command line, checked as it is read: a missing file or one that is not Python is
    refused before torch or the file load (a fraction of a second, not ten)."""
    if path is not None:
        if not path.is_file():
            raise typer.BadParameter(f"task file {path} does not exist")
        if path.suffix != ".py":
            raise typer.BadParameter(f"task file {path} is not a .py file")
    return path


# the task a training command works on: every such command takes it the same way
TaskFile = Annotated[
    Path | None, typer.Argument(help="Python file defining task(seed) or make_trainer(plan); omit for the built-in "
                                "example", callback=_task_file)]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Learning rate, batch size, accumulation, epochs and schedules for PyTorch, measured.",
)
console = Console(emoji=False)  # ":100:" in a file name or message is text, never an emoji
err_console = Console(stderr=True, emoji=False)
F = TypeVar("F", bound=Callable[..., Any])
_JSON_OUT: list[Any] = []  # the stdout a --json command writes its JSON to, while its own prints go to stderr


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"gradpilot {version('gradpilot')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Learning rate, batch size, accumulation, epochs and schedules for PyTorch, measured."""


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    return typer.Exit(code=code)


def _one_line_errors(command: F) -> F:
    """Bad input → one line, exit 2; anything unexpected → one line, exit 3 (traceback with GRADPILOT_DEBUG=1)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with _warnings_as_lines():
                return _json_apart(command, *args, **kwargs) if kwargs.get("as_json") else command(*args, **kwargs)
        except GradpilotError as exc:
            raise _fail(_escape(str(exc))) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("GRADPILOT_DEBUG"):
                raise
            raise _fail(_escape(f"{describe(exc, 300)} (GRADPILOT_DEBUG=1 shows where)"), code=3) from None

    return run  # type: ignore[return-value]


def _json_apart(command: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a ``--json`` command with stdout kept for its JSON: what the task file prints goes to stderr."""
    _JSON_OUT.append(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return command(*args, **kwargs)
    finally:
        _JSON_OUT.pop()


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Python warnings (gradpilot's own and the libraries') as one ``warning:`` line each on stderr."""
    shown = warnings.showwarning

    def show(message: Warning | str, *_: Any, **__: Any) -> None:
        err_console.print(f"[yellow]warning:[/] {_escape(' '.join(str(message).split()))}", highlight=False,
                          soft_wrap=True)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _escape(text: str) -> str:
    return text.replace("[", "\\[")


def _load(task_file: Path | None, seed: int) -> Task:
    from gradpilot.examples import example_task
    from gradpilot.task_file import load_task

    return example_task(seed) if task_file is None else load_task(task_file, seed=seed)


def _dumps(value: Any) -> str:
    from gradpilot._files import dumps

    return dumps(value)


def _print_json(value: Any) -> None:
    """``value`` as strict JSON on the command's own stdout (under ``--json`` everything else goes to stderr)."""
    out = _JSON_OUT[-1] if _JSON_OUT else sys.stdout
    out.write(_dumps(value) + "\n")
    out.flush()


def _draw(draw: Callable[[], Any], path: Path) -> bool:
    """Render after the results are out: a failure here costs the picture, never the work."""
    try:
        draw()
        return True
    except Exception as exc:
        err_console.print(
            f"[bold red]error:[/] could not draw {path}: {_escape(first_line(exc))}",
            highlight=False,
            soft_wrap=True,
        )
        return False
