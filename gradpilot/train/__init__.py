"""Training: the ``Task``, gradpilot's one engine (``run``: a run advances, branches, validates, saves and
resumes) and ``fit``, the driver over it (epochs, validation, early stopping, checkpoints, the monitor). The
seam every run goes through (``seam``: the record, cost and score every engine keeps) imports no torch; the
rest loads it when used."""

from typing import TYPE_CHECKING

from gradpilot import _lazy

if TYPE_CHECKING:
    from gradpilot.train.early_stopping import EarlyStopping
    from gradpilot.train.evaluation import evaluate
    from gradpilot.train.fitting import FitConfig, FitResult, fit
    from gradpilot.train.monitor import Action, Monitor
    from gradpilot.train.task import Task

__all__ = ["Action", "EarlyStopping", "FitConfig", "FitResult", "Monitor", "Task", "evaluate", "fit"]
__getattr__ = _lazy.exports(__name__, {
    "EarlyStopping": "early_stopping", "evaluate": "evaluation", "FitConfig": "fitting", "FitResult": "fitting",
    "fit": "fitting", "Action": "monitor", "Monitor": "monitor", "Task": "task"})
