"""Batch-size arithmetic and LR scaling rules. Pure math: no torch import."""

from __future__ import annotations

def optimizer_family(name: str) -> str:
    """``"sgd"`` for SGD-like optimizers (step = lr × gradient), ``"adaptive"`` for the rest (Adam, RMSprop, ...)."""
    key = name.lower().replace("_", "").replace("-", "")
    if "sgd" in key or key in ("lars", "nesterov", "momentum"):
        return "sgd"
    return "adaptive"
