"""``python -m gradpilot.cli``: the ``gradpilot`` command."""

from gradpilot.cli import main

main()
