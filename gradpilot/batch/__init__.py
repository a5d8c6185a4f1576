"""The batch size: the largest micro-batch that fits memory (OOM-safe) and the gradient noise scale that says
which batch is worth it. The arithmetic between batches (LR scaling rules, accumulation plans) is
``gradpilot.scaling``."""

from gradpilot.batch.finder import (
    BatchSizeResult,
    BatchTrial,
    NoiseScaleResult,
    estimate_noise_scale,
    find_batch_size,
)

__all__ = ["BatchSizeResult", "BatchTrial", "NoiseScaleResult", "estimate_noise_scale", "find_batch_size"]
