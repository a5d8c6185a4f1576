"""The one LR-factor function behind every warmup and decay gradpilot trains with: transformers'
warmup–stable–decay (``get_wsd_schedule``), so a plan that names ``warmup_steps`` or ``warmup_stable_decay``
means exactly the LRs gradpilot trained at. Pure math: no torch.

The factor multiplies each param group's own LR (a body with a smaller LR than its head keeps the ratio).
``Wsd`` holds one schedule's phases and says it in ``TrainingArguments`` names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

DecayType = Literal["linear", "cosine", "1-sqrt"]
DECAY_TYPES: tuple[DecayType, ...] = ("linear", "cosine", "1-sqrt")
FOREVER = 1 << 62  # a stable phase that never ends (a short run at its constant LR)


def wsd(step: int, *, warmup: int = 0, stable: int = FOREVER, decay: int = 0, min_ratio: float = 0.0,
        decay_type: DecayType = "linear", warmup_from_floor: bool = True) -> float:
    """The LR factor at optimizer step ``step`` (0 for the first) of a run that warms up linearly over ``warmup``
    steps, holds the peak ``stable`` steps, then decays over ``decay`` steps to ``min_ratio`` — step for step
    what transformers' ``warmup_stable_decay`` scheduler gives, whose warmup rises from ``min_ratio``
    (``warmup_from_floor``; transformers' ``cosine_with_min_lr`` rises from 0)."""
    if step < warmup:
        floor = min_ratio if warmup_from_floor else 0.0
        return max(0.0, step / max(1, warmup) * (1.0 - floor) + floor)
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


@dataclass(frozen=True)
class Wsd:
    """One warmup–stable–decay schedule: ``factor(step)`` is ``wsd`` over these phases. The default holds the
    peak for ever after its warmup (a constant LR); ``decayed_from`` turns it into a branch that decays."""

    warmup: int = 0
    stable: int = FOREVER
    decay: int = 0
    min_ratio: float = 0.0
    decay_type: DecayType = "linear"
    warmup_from_floor: bool = True

    def factor(self, step: int) -> float:
        return wsd(step, warmup=self.warmup, stable=self.stable, decay=self.decay, min_ratio=self.min_ratio,
                   decay_type=self.decay_type, warmup_from_floor=self.warmup_from_floor)

    @property
    def steps(self) -> int:
        """The steps the schedule lasts: warmup, stable phase and decay (FOREVER for a constant LR)."""
        return FOREVER if self.stable >= FOREVER else self.warmup + self.stable + self.decay

    def decayed_from(self, step: int, decay: int, decay_type: DecayType, min_ratio: float = 0.0) -> Wsd:
        """This schedule held at its peak until ``step``, then decayed over ``decay`` steps (a cooldown branch).
        A branch that starts inside the warmup ends the warmup there (its peak is the factor reached); a decay of
        no steps leaves the schedule as it is."""
        if decay == 0:
            return self
        warm = min(self.warmup, step)
        return Wsd(warm, step - warm, decay, min_ratio, decay_type)

    def training_arguments(self) -> dict[str, Any]:
        """The schedule in Hugging Face ``TrainingArguments`` names: ``lr_scheduler_type``, its
        ``lr_scheduler_kwargs`` and ``warmup_steps``, such that ``transformers.get_scheduler`` over the schedule's
        steps gives the same LRs. The stable phase is left out: transformers derives it from the run's length, so a
        run of another length (more epochs, more processes) still ends in the whole decay."""
        if self.stable >= FOREVER:
            name = "constant_with_warmup" if self.warmup else "constant"
            return {"lr_scheduler_type": name, "lr_scheduler_kwargs": {}, "warmup_steps": self.warmup}
        return {"lr_scheduler_type": "warmup_stable_decay", "warmup_steps": self.warmup,
                "lr_scheduler_kwargs": {"num_decay_steps": self.decay, "decay_type": self.decay_type,
                                        "min_lr_ratio": self.min_ratio}}
