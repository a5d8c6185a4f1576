"""gradpilot: learning rate, batch size, accumulation, epochs and schedules for PyTorch, measured.

One name per concept. Names are imported on first use, so that reading logs (``gradpilot.diagnose``,
``gradpilot.read_log``) never pays for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradpilot import _lazy
from gradpilot.errors import GradpilotError

if TYPE_CHECKING:  # imported on first use, through __getattr__ below: torch only by what trains
    from gradpilot import scaling
    from gradpilot.batch import BatchSizeResult, BatchTrial, NoiseScaleResult, estimate_noise_scale, find_batch_size
    from gradpilot.diagnosis import Diagnosis, Finding, History, Series, diagnose, read_log
    from gradpilot.lr import LRFinderResult, find_lr
    from gradpilot.probing import ProbeResult, probe
    from gradpilot.scaling import BatchPlan
    from gradpilot.task_file import load_task
    from gradpilot.train import Action, EarlyStopping, FitConfig, FitResult, Monitor, Task, fit
    from gradpilot.tuning import Stage, TuneResult, tune

_WHERE = {
    "Diagnosis": "diagnosis", "Finding": "diagnosis", "History": "diagnosis", "Series": "diagnosis",
    "diagnose": "diagnosis", "read_log": "diagnosis",
    "BatchSizeResult": "batch", "BatchTrial": "batch", "NoiseScaleResult": "batch", "estimate_noise_scale": "batch",
    "find_batch_size": "batch", "LRFinderResult": "lr", "find_lr": "lr", "ProbeResult": "probing", "probe": "probing",
    "BatchPlan": "scaling", "load_task": "task_file", "Action": "train", "EarlyStopping": "train", "FitConfig": "train",
    "FitResult": "train", "Monitor": "train", "Task": "train", "fit": "train", "Stage": "tuning",
    "TuneResult": "tuning", "tune": "tuning",
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

__getattr__ = _lazy.exports(__name__, _WHERE)  # a module named there (``gradpilot.scaling``) too
