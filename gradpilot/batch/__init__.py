"""The batch size: the largest micro-batch that fits memory (OOM-safe) and the gradient noise scale that says
which batch is worth it (``finder``; what they find: ``results``, no torch). The arithmetic between batches (LR
scaling rules, accumulation plans) is ``gradpilot.scaling``."""

from typing import TYPE_CHECKING

from gradpilot import _lazy
from gradpilot.batch.results import BatchSizeResult, BatchTrial, NoiseScaleResult

if TYPE_CHECKING:
    from gradpilot.batch.finder import estimate_noise_scale, find_batch_size

__all__ = ["BatchSizeResult", "BatchTrial", "NoiseScaleResult", "estimate_noise_scale", "find_batch_size"]
__getattr__ = _lazy.exports(__name__, {"estimate_noise_scale": "finder", "find_batch_size": "finder"})
