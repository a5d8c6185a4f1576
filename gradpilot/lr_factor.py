"""The one LR-factor function behind every warmup and decay gradpilot trains with: transformers'
warmup–stable–decay (``get_wsd_schedule``), so a plan that names ``warmup_steps`` or ``warmup_stable_decay``
means exactly the LRs gradpilot trained at. Pure math: no torch.

The factor multiplies each param group's own LR (a body with a smaller LR than its head keeps the ratio).
"""

from __future__ import annotations

import math
from typing import Literal

DecayType = Literal["linear", "cosine", "1-sqrt"]
FOREVER = 1 << 62  # a stable phase that never ends (a short run at its constant LR)


def wsd(step: int, *, warmup: int = 0, stable: int = FOREVER, decay: int = 0, min_ratio: float = 0.0,
        decay_type: DecayType = "linear") -> float:
    """The LR factor at optimizer step ``step`` (0 for the first) of a run that warms up linearly from 0 over
    ``warmup`` steps, holds the peak ``stable`` steps, then decays over ``decay`` steps to ``min_ratio`` —
    step for step what transformers' ``warmup_stable_decay`` scheduler gives."""
    if step < warmup:  # from min_ratio up, as transformers scales its warmup too
        return max(0.0, step / max(1, warmup) * (1.0 - min_ratio) + min_ratio)
    if step < warmup + stable:
        return 1.0
    if step < warmup + stable + decay:
        progress = (step - warmup - stable) / max(1, decay)
        return max(0.0, _decayed(progress, decay_type) * (1.0 - min_ratio) + min_ratio)
    return min_ratio


def _decayed(progress: float, decay_type: DecayType) -> float:
    if decay_type == "linear":
        return 1.0 - progress
    if decay_type == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - math.sqrt(progress)


def warmup(step: int, steps: int) -> float:
    """The linear warmup alone: ``step / steps`` until ``steps``, then 1 (transformers' warmup)."""
    return wsd(step, warmup=steps)


def cooldown(step: int, steps: int) -> float:
    """A decay from the peak to 0 over ``steps`` steps, as the decay phase of ``wsd`` with no warmup or stable
    phase (the branch the search scores a run by)."""
    return wsd(step, stable=0, decay=steps)
