"""Training: the ``Task``, gradpilot's one engine (``run``: a run advances, branches, validates, saves and
resumes) and ``fit``, the driver over it (epochs, validation, early stopping, checkpoints, the monitor)."""

from gradpilot.train.early_stopping import EarlyStopping
from gradpilot.train.evaluation import evaluate
from gradpilot.train.fitting import FitConfig, FitResult, fit
from gradpilot.train.monitor import Action, Monitor
from gradpilot.train.task import Task

__all__ = ["Action", "EarlyStopping", "FitConfig", "FitResult", "Monitor", "Task", "evaluate", "fit"]
