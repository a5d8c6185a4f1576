"""gradpilot: learning rate, batch size, accumulation, epochs and schedules for PyTorch, measured.

Names are imported on first use, so that reading logs (``gradpilot.diagnose``, ``gradpilot.read_log``)
never pays for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# torch-free: imported now
from gradpilot import scaling
from gradpilot.diagnosis import Diagnosis, Finding, diagnose
from gradpilot.early_stopping import EarlyStopping
from gradpilot.errors import GradpilotError
from gradpilot.history import History, Series
from gradpilot.logs import read_log

if TYPE_CHECKING:  # need torch: imported on first use, through __getattr__ below
    from gradpilot.batch_size import (
        BatchSizeResult,
        BatchTrial,
        NoiseScaleResult,
        estimate_noise_scale,
        find_batch_size,
    )
    from gradpilot.lr_finder import LRFinderResult, find_lr
    from gradpilot.monitor import Action, Monitor
    from gradpilot.probing import ProbeResult, probe
    from gradpilot.scaling import BatchPlan
    from gradpilot.task import Task
    from gradpilot.task_file import load_task
    from gradpilot.training import FitConfig, FitResult, fit
    from gradpilot.tuning import Stage, TuneResult, tune

_WHERE = {
    "BatchSizeResult": "batch_size", "BatchTrial": "batch_size", "Action": "monitor", "BatchPlan": "scaling",
    "FitConfig": "training", "Stage": "tuning", "NoiseScaleResult": "batch_size", "estimate_noise_scale": "batch_size",
    "find_batch_size": "batch_size", "LRFinderResult": "lr_finder",
    "find_lr": "lr_finder", "Monitor": "monitor", "Task": "task", "load_task": "task_file", "FitResult": "training",
    "fit": "training", "TuneResult": "tuning", "tune": "tuning", "probe": "probing", "ProbeResult": "probing",
}

__all__ = [
    "Action",
    "BatchPlan",
    "BatchSizeResult",
    "BatchTrial",
    "Diagnosis",
    "EarlyStopping",
    "Finding",
    "FitConfig",
    "FitResult",
    "GradpilotError",
    "History",
    "LRFinderResult",
    "Monitor",
    "NoiseScaleResult",
    "ProbeResult",
    "Series",
    "Stage",
    "Task",
    "TuneResult",
    "diagnose",
    "estimate_noise_scale",
    "find_batch_size",
    "find_lr",
    "fit",
    "load_task",
    "probe",
    "read_log",
    "scaling",
    "tune",
]
__version__ = "0.1.0"


_SUBMODULES = ("batch_size", "lr_finder", "training", "evaluation", "monitor", "task", "report", "cli", "examples",
               "accumulation", "schedules", "suggest", "tuning", "task_file", "distributed", "diagnosis",
               "probing", "runner", "lr_factor")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # `gradpilot.training.evaluate` works without importing the submodule first
        return importlib.import_module(f"gradpilot.{name}")
    if name in _WHERE:
        value = getattr(importlib.import_module(f"gradpilot.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gradpilot' has no attribute {name!r}")
