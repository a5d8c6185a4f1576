"""gradpilot: learning rate, batch size, accumulation, epochs and schedules for PyTorch, measured."""

from gradpilot.errors import GradpilotError
from gradpilot.lr_finder import LRFinderResult, find_lr
from gradpilot.task import Task, load_task

__all__ = ["GradpilotError", "LRFinderResult", "Task", "find_lr", "load_task"]
__version__ = "0.1.0"
