"""The ``gradpilot`` command's typer app: every command group adds its commands to it when imported. The commands
that read logs (``diagnose``, ``watch``) are ``argparse`` commands of their own (``logs``), listed here for
``gradpilot --help`` and reached here only through the app (a test's ``CliRunner``); ``gradpilot diagnose`` from
the shell goes to them straight from ``main``."""

from __future__ import annotations

import sys

import typer

from gradpilot.cli import batch, lr, probe, schedule, train, tune  # noqa: F401 — each adds its commands
from gradpilot.cli.common import _escape, app, err_console
from gradpilot.cli.logs import run

__all__ = ["app", "run_app"]
FORWARDED = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command("diagnose", context_settings=FORWARDED, add_help_option=False)
def diagnose_command(ctx: typer.Context) -> None:
    """Say what went wrong in a run and what to change, from its log (see gradpilot diagnose --help)."""
    raise typer.Exit(run(["diagnose", *ctx.args]))


@app.command("watch", context_settings=FORWARDED, add_help_option=False)
def watch_command(ctx: typer.Context) -> None:
    """Follow a live run's log from outside, say each finding as it appears, stop the job on trouble."""
    raise typer.Exit(run(["watch", *ctx.args]))


def run_app() -> None:
    """The console entry point: as ``app()``, with a usage mistake (an unknown option, a value of the wrong
    type) told in one line like every other error."""
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
    code = code if isinstance(code, int) else 0
    if "torch" in sys.modules:
        _leave(code)
    sys.exit(code)


def _leave(code: int) -> None:
    """Exit once the output is out and the exit handlers have run, without the interpreter's teardown of torch
    and what came with it (about a second after a training command): the wall time a command records in its
    folder is then the time it takes."""
    import atexit
    import logging
    import os

    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


