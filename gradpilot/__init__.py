"""gradpilot: learning rate, batch size, accumulation, epochs and schedules for PyTorch, measured."""

from gradpilot import scaling
from gradpilot.batch_size import BatchSizeResult, NoiseScaleResult, estimate_noise_scale, find_batch_size
from gradpilot.early_stopping import EarlyStopping
from gradpilot.errors import GradpilotError
from gradpilot.lr_finder import LRFinderResult, find_lr
from gradpilot.task import Task, load_task
from gradpilot.training import FitResult, fit

__all__ = [
    "BatchSizeResult",
    "EarlyStopping",
    "FitResult",
    "GradpilotError",
    "LRFinderResult",
    "NoiseScaleResult",
    "Task",
    "estimate_noise_scale",
    "find_batch_size",
    "find_lr",
    "fit",
    "load_task",
    "scaling",
]
__version__ = "0.1.0"
