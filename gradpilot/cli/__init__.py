"""The ``gradpilot`` command: the console belongs here, the analysis to the library.

One module per command group, each command a thin shell over a library function: ``find-lr`` (``lr``), ``plan`` and
``find-batch-size`` (``batch``), ``schedule``, ``diagnose``, ``probe``, ``train``, ``tune`` and ``report``
(``tune``); what they share is in ``common``. torch is imported inside the commands that train (never at start-up),
so ``gradpilot diagnose`` and every ``--help`` start in a fraction of a second. Bad input ends in one line and exit
code 2; an unexpected error in one line and exit code 3 (``GRADPILOT_DEBUG=1`` shows its traceback); work already
done is printed before anything that may still fail (a plot) is attempted.
"""

from __future__ import annotations

import typer

# each command group adds its commands to the app when imported
from gradpilot.cli import batch, diagnose, lr, probe, schedule, train, tune  # noqa: F401
from gradpilot.cli.common import _escape, app, err_console

__all__ = ["app", "main"]


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
