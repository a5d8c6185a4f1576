"""gradpilot: learning rate, batch size, accumulation, epochs and schedules for PyTorch, measured."""

from gradpilot import scaling
from gradpilot.batch_size import BatchSizeResult, NoiseScaleResult, estimate_noise_scale, find_batch_size
from gradpilot.diagnose import Diagnosis, Finding, diagnose
from gradpilot.early_stopping import EarlyStopping
from gradpilot.errors import GradpilotError
from gradpilot.history import History
from gradpilot.logs import read_log
from gradpilot.lr_finder import LRFinderResult, find_lr
from gradpilot.monitor import Monitor
from gradpilot.task import Task, load_task
from gradpilot.training import FitResult, fit

__all__ = [
    "BatchSizeResult",
    "Diagnosis",
    "Finding",
    "History",
    "Monitor",
    "EarlyStopping",
    "FitResult",
    "GradpilotError",
    "LRFinderResult",
    "NoiseScaleResult",
    "Task",
    "diagnose",
    "estimate_noise_scale",
    "find_batch_size",
    "find_lr",
    "fit",
    "load_task",
    "read_log",
    "scaling",
]
__version__ = "0.1.0"
