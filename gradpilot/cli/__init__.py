"""The ``gradpilot`` command: the console belongs here, the analysis to the library.

One module per command group, each command a thin shell over a library function: ``find-lr`` (``lr``), ``plan`` and
``find-batch-size`` (``batch``), ``schedule``, ``diagnose``, ``probe``, ``train``, ``tune`` and ``report``
(``tune``); what they share is in ``common``. torch is imported inside the commands that train (never at start-up),
so ``gradpilot diagnose`` and every ``--help`` start in a fraction of a second. Bad input ends in one line and exit
code 2; an unexpected error in one line and exit code 3 (``GRADPILOT_DEBUG=1`` shows its traceback); work already
done is printed before anything that may still fail (a plot) is attempted.
"""

from __future__ import annotations

import os
import sys
from typing import Any

LOG_COMMANDS = ("diagnose", "watch")  # argparse commands that start in a fraction of a second (``logs``)

__all__ = ["app", "main"]


def main() -> None:
    """The console entry point: the log commands straight to their own lean parser, the rest to the typer app
    (a usage mistake told in one line like every other error)."""
    argv = sys.argv[1:]
    if argv and argv[0] in LOG_COMMANDS:
        # Reading logs needs no threaded linear algebra: one BLAS thread starts NumPy about a third faster, and
        # a watcher beside a training job takes no cores from it. A value the user set is kept.
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, "1")
        from gradpilot.cli.logs import run

        sys.exit(run(argv))
    from gradpilot.cli.commands import run_app

    run_app()


def __getattr__(name: str) -> Any:
    if name == "app":  # ``from gradpilot.cli import app``: the typer app, loaded when asked for
        from gradpilot.cli.commands import app

        return app
    raise AttributeError(f"module 'gradpilot.cli' has no attribute {name!r}")


if __name__ == "__main__":  # pragma: no cover
    main()
