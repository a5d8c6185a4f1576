"""Mixed precision for every run gradpilot trains — ``fit``, the range test, the short runs: the forward under
``torch.autocast`` in ``bf16`` or ``fp16``, and for ``fp16`` a ``GradScaler`` whose skipped steps (an overflow)
are told apart from real ones. ``fp32`` changes nothing. Validation runs in full precision.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch

from gradpilot.errors import GradpilotError

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check(precision: Any, where: str = "precision") -> Precision:
    """``precision`` if it is one gradpilot trains in, else one line saying which are."""
    if precision not in PRECISIONS:
        raise GradpilotError(f"{where} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    found: Precision = precision
    return found


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    """The forward's context: autocast to ``precision`` on ``device``'s kind, or nothing for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def scaler_for(device: torch.device, precision: Precision) -> torch.amp.GradScaler | None:
    """A loss scaler for ``fp16`` (its small range underflows gradients without one); None otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def skipped(scaler: torch.amp.GradScaler | None, scale_before: float) -> bool:
    """Whether the scaler skipped the step just taken (it found infinite gradients and lowered its scale)."""
    return scaler is not None and float(scaler.get_scale()) < scale_before
