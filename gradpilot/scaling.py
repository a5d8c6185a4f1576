"""Batch-size arithmetic, LR scaling rules, accumulation plans and the gradient noise scale.

Pure math: no torch import, so every rule here is checked with plain numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gradpilot import _validate
from gradpilot.errors import GradpilotError

LRRule = Literal["linear", "sqrt", "none", "auto"]
Family = Literal["sgd", "adaptive", "unknown"]
LR_RULES: tuple[LRRule, ...] = ("linear", "sqrt", "none", "auto")
WARMUP_ABOVE = 2.0  # recommend warmup when the LR grows by more than this factor


SGD_FAMILY = {"sgd", "asgd", "lars", "nesterov", "momentum", "sgdw", "sgdnesterov", "sgdmomentum"}
ADAPTIVE_FAMILY = {"adam", "adamw", "nadam", "radam", "adamax", "rmsprop", "adagrad", "adadelta", "sparseadam",
                   "lamb", "adafactor", "adabelief", "adan", "adamwschedulefree", "fusedadam",
                   "adam8bit", "adamw8bit", "pagedadamw", "pagedadamw8bit", "lomo", "adalomo"}


def optimizer_family(name: str) -> Family:
    """``"sgd"`` for SGD-like optimizers (step = lr × gradient), ``"adaptive"`` for those whose step is
    normalised (Adam, RMSprop, Adafactor, ...), ``"unknown"`` for a name gradpilot does not know (Lion, LBFGS)."""
    key = "".join(c for c in name.lower() if c.isalnum())
    if key in SGD_FAMILY or key.startswith("sgd"):
        return "sgd"
    if key in ADAPTIVE_FAMILY or key.startswith(("adam", "nadam", "radam", "pagedadam")):
        return "adaptive"
    return "unknown"


def _positive_int(name: str, value: int) -> int:
    return _validate.positive_int(name, value)


def _positive_lr(lr: float) -> float:
    return _validate.positive_float("lr", lr)


def effective_batch_size(micro_batch_size: int, accumulation_steps: int = 1, world_size: int = 1) -> int:
    """Items per optimizer step: micro-batch × accumulation steps × data-parallel processes."""
    return (_positive_int("micro_batch_size", micro_batch_size)
            * _positive_int("accumulation_steps", accumulation_steps) * _positive_int("world_size", world_size))


def resolve_rule(rule: LRRule, optimizer: str | None = None) -> LRRule:
    """Turn ``"auto"`` into ``"linear"`` (SGD family) or ``"sqrt"`` (adaptive); check other names."""
    if rule not in LR_RULES:
        raise GradpilotError(f"unknown LR scaling rule {rule!r}; choose one of {list(LR_RULES)}")
    if rule != "auto":
        return rule
    if optimizer is None:
        raise GradpilotError("rule='auto' needs the optimizer name (e.g. optimizer='adamw') to pick linear or sqrt")
    family = optimizer_family(optimizer)
    if family == "unknown":
        raise GradpilotError(f"cannot tell whether optimizer {optimizer!r} scales like SGD or like Adam: "
                             "choose the rule yourself, 'linear' (SGD-like) or 'sqrt' (Adam-like)")
    return "linear" if family == "sgd" else "sqrt"


def scale_lr(lr: float, from_batch: int, to_batch: int, rule: LRRule = "auto", *,
             optimizer: str | None = None) -> float:
    """The LR for ``to_batch`` given a good ``lr`` at ``from_batch``.

    ``linear`` (SGD, Goyal et al. 2017) scales by the batch ratio, ``sqrt`` (Adam family, Malladi et al.
    2022) by its square root, ``none`` keeps the LR; ``auto`` picks by ``optimizer``.
    """
    lr = _positive_lr(lr)
    ratio = _positive_int("to_batch", to_batch) / _positive_int("from_batch", from_batch)
    rule = resolve_rule(rule, optimizer)
    return lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[rule]


def warmup_ratio(lr_growth: float) -> float:
    """Share of training to warm up over when the LR grows by ``lr_growth``; 0 when it grows ≤ 2×.

    Goyal et al. warmed up 5 of 90 epochs for a 32× larger LR; we grow the share with log2 of the jump,
    capped at 10%.
    """
    if lr_growth <= WARMUP_ABOVE:
        return 0.0
    return min(0.1, 0.011 * math.log2(lr_growth))


@dataclass(frozen=True)
class BatchPlan:
    """How to reach a target batch: micro-batch, accumulation, world size, and the LR that goes with it."""

    micro_batch_size: int
    accumulation_steps: int
    world_size: int
    effective_batch_size: int
    target_batch_size: int
    exact: bool
    note: str
    lr: float | None = None
    lr_rule: LRRule | None = None
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None


def plan(
    target_batch: int,
    max_micro_batch: int,
    world_size: int = 1,
    *,
    lr: float | None = None,
    batch_size: int | None = None,
    optimizer: str | None = None,
    rule: LRRule = "auto",
    total_steps: int | None = None,
) -> BatchPlan:
    """Micro-batch and accumulation steps that reach ``target_batch`` within ``max_micro_batch`` per device.

    Fewest accumulation steps first; when the target cannot be hit exactly the closest effective batch is
    chosen and ``note`` says by how much it misses. Given the current ``lr`` at ``batch_size`` (its
    effective batch), the LR is scaled by ``rule`` and warmup is recommended for jumps above 2×.
    """
    target = _positive_int("target_batch", target_batch)
    max_micro = _positive_int("max_micro_batch", max_micro_batch)
    world = _positive_int("world_size", world_size)
    micro, steps = _split(target, max_micro, world)
    effective = micro * steps * world
    exact = effective == target
    if exact:
        note = f"{micro} × {steps} accumulation × {world} process{'es' if world > 1 else ''} = {target}"
    elif target < world:
        note = f"target {target} is below one item per process ({world} processes): the smallest batch is {effective}"
    else:
        gap = effective - target
        note = f"{target} cannot be split exactly; {effective} is {abs(gap)} {'over' if gap > 0 else 'short'}"
    new_lr = rule_used = None
    ratio = 0.0
    if lr is not None or batch_size is not None:
        if lr is None or batch_size is None:
            raise GradpilotError("to scale the LR give both lr and batch_size (the effective batch it was tuned at)")
        rule_used = resolve_rule(rule, optimizer)
        new_lr = scale_lr(lr, batch_size, effective, rule_used)
        ratio = warmup_ratio(new_lr / lr)
    warm_steps = None
    if total_steps is not None:
        warm_steps = math.ceil(ratio * _positive_int("total_steps", total_steps))
    return BatchPlan(micro, steps, world, effective, target, exact, note, new_lr, rule_used, ratio, warm_steps)


def _split(target: int, max_micro: int, world: int) -> tuple[int, int]:
    """(micro, steps) whose product times ``world`` is closest to ``target``; fewest steps on ties.

    Step counts from the fewest that fit up to twice that are weighed (so an exact split with smaller
    micro-batches can win); they are enumerated through whichever side is shorter, the step counts or the
    micro-batch sizes, so the work stays near the square root of the target.
    """
    per_device = max(target / world, 1.0)
    fewest = math.ceil(per_device / max_micro)
    pairs: set[tuple[int, int]] = set()
    if fewest <= max_micro:
        for steps in range(fewest, 2 * fewest + 1):
            pairs |= {(m, steps) for m in (math.floor(per_device / steps), math.ceil(per_device / steps))}
    else:
        for micro in range(max(1, math.floor(per_device / (2 * fewest))), max_micro + 1):
            pairs |= {(micro, s) for s in (math.floor(per_device / micro), math.ceil(per_device / micro))}
    best = min(((abs(m * s * world - target), s, -m) for m, s in pairs
                if 1 <= m <= max_micro and fewest <= s <= 2 * fewest), default=None)
    assert best is not None  # steps = fewest always admits a micro-batch in range
    return -best[2], best[1]


def search_batch_size(fits: Callable[[int], bool], *, start: int = 1,
                      max_size: int | None = None) -> tuple[int, list[tuple[int, bool]]]:
    """Largest size for which ``fits(size)`` holds: double from ``start`` until a failure, then bisect.

    Bisection stops once the gap is within 1/32 of the size (exact below 64): finer steps buy nothing.
    Returns the size (0 if even ``start`` fails) and every ``(size, fitted)`` tried, in order.
    """
    _positive_int("start", start)
    tried: list[tuple[int, bool]] = []

    def attempt(size: int) -> bool:
        ok = fits(size)
        tried.append((size, ok))
        return ok

    good, bad = 0, None
    size = start
    while True:
        if max_size is not None and size >= max_size:
            size = max_size
        if not attempt(size):
            bad = size
            break
        good = size
        if max_size is not None and size >= max_size:
            return good, tried
        size *= 2
    while good and bad - good > max(1, good // 32):
        mid = (good + bad) // 2
        if attempt(mid):
            good = mid
        else:
            bad = mid
    return good, tried


@dataclass(frozen=True)
class NoiseScale:
    """The gradient noise scale B_simple = tr(Σ) / |G|² and the parts it is made of."""

    b_simple: float
    grad_sq: float  # |G|², the squared norm of the true gradient
    trace_cov: float  # tr(Σ), the per-example gradient variance summed over parameters


def noise_scale(small_sq_norm: float, big_sq_norm: float, b_small: int, b_big: int) -> NoiseScale:
    """Unbiased |G|² and tr(Σ) from mean squared gradient norms at two batch sizes (McCandlish et al. 2018).

    Uses E|G_B|² = |G|² + tr(Σ)/B at B = ``b_small`` and ``b_big``.
    """
    b_small, b_big = _positive_int("b_small", b_small), _positive_int("b_big", b_big)
    if not (math.isfinite(small_sq_norm) and math.isfinite(big_sq_norm)):
        raise GradpilotError("the gradient norms are not finite (a NaN or infinite loss or gradient at these "
                             "weights): the noise scale cannot be measured; check the loss on a few batches")
    if b_big <= b_small:
        raise GradpilotError(f"b_big must be larger than b_small, got {b_small=} and {b_big=}")
    grad_sq = (b_big * big_sq_norm - b_small * small_sq_norm) / (b_big - b_small)
    trace = (small_sq_norm - big_sq_norm) / (1 / b_small - 1 / b_big)
    if grad_sq <= 0 or trace <= 0:
        raise GradpilotError(
            f"the noise scale is not measurable from these norms (|G|²≈{grad_sq:.3g}, tr(Σ)≈{trace:.3g}): "
            "average over more batches or use batch sizes further apart"
        )
    return NoiseScale(trace / grad_sq, grad_sq, trace)

