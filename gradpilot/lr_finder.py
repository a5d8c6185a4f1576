"""The LR range test: sweep the learning rate exponentially, watch the loss, suggest a learning rate."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from gradpilot import _validate, suggest
from gradpilot._batch import LossFn, StepFn, cycle, model_device
from gradpilot._state import preserved
from gradpilot.accumulation import NumItems, accumulate, item_counter
from gradpilot.errors import GradpilotError
from gradpilot.scaling import optimizer_family
from gradpilot.task import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LRFinderResult:
    """What a range test saw: the swept LRs, raw and smoothed losses, and the suggested LR."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed_losses: tuple[float, ...]
    suggestion: float
    rule: str
    alternatives: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    stop_reason: str = "reached end_lr"

    def plot(self, path: str | Path) -> Path:
        """Draw the curve with every rule's pick marked and save it as an image at ``path``."""
        from gradpilot.report import plot_lr_curve

        return plot_lr_curve(self, Path(path))


def _check_args(start_lr: float, end_lr: float, num_steps: int, accumulation_steps: int,
                diverge_threshold: float, smoothing: float) -> None:
    _validate.positive_float("start_lr", start_lr)
    _validate.positive_float("end_lr", end_lr)
    if start_lr >= end_lr:
        raise GradpilotError(f"start_lr must be below end_lr, got {start_lr=} >= {end_lr=}; swap them")
    if _validate.positive_int("num_steps", num_steps) < 10:
        raise GradpilotError(f"num_steps must be at least 10 to draw a curve, got {num_steps=}")
    _validate.positive_int("accumulation_steps", accumulation_steps)
    if _validate.positive_float("diverge_threshold", diverge_threshold) <= 1:
        raise GradpilotError(f"diverge_threshold must be above 1, got {diverge_threshold=}")
    if _validate.unit_interval("smoothing", smoothing, closed=True) == 1:
        raise GradpilotError(f"smoothing must be in [0, 1), got {smoothing=}")


def find_lr(
    model: nn.Module | Task,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: LossFn | None = None,
    train_loader: Iterable[Any] | None = None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    step_fn: StepFn | None = None,
    device: str | torch.device | None = None,
    accumulation_steps: int = 1,
    num_items: NumItems | None = None,
    smoothing: float = 0.98,
    diverge_threshold: float = 4.0,
    rule: suggest.RuleName = suggest.DEFAULT_RULE,
    family: Literal["sgd", "adaptive"] | None = None,
    progress: Callable[[int, int, float, float], None] | None = None,
) -> LRFinderResult:
    """Run an LR range test and suggest a learning rate; the model and optimizer are left untouched.

    ``model`` may be a ``gradpilot.Task``: its model, a fresh optimizer, its loss and its training batches.

    The LR grows exponentially from ``start_lr`` to ``end_lr`` over ``num_steps`` optimizer steps and the
    sweep stops once the smoothed loss passes ``diverge_threshold`` times its best or is not finite.
    ``accumulation_steps`` micro-batches make one step, weighted by their items as in ``fit`` (count them
    with ``num_items(batch)`` when gradpilot cannot). ``family`` ("sgd" or "adaptive") tells the rules how
    the optimizer steps; by default it is read off the optimizer's class name.
    """
    if isinstance(model, Task):
        optimizer = optimizer if optimizer is not None else model.make_optimizer()
        loss_fn = loss_fn if loss_fn is not None else model.loss_fn
        train_loader = train_loader if train_loader is not None else model.train_loader()
        model = model.model
    if optimizer is None or train_loader is None:
        raise GradpilotError("find_lr needs an optimizer and a train_loader, or a gradpilot.Task")
    _check_args(start_lr, end_lr, num_steps, accumulation_steps, diverge_threshold, smoothing)
    if not any(p.requires_grad for g in optimizer.param_groups for p in g["params"]):
        raise GradpilotError("the optimizer holds no parameter that requires grad: nothing would train")
    suggest.get_rule(rule)  # fail fast on an unknown name
    resolved = _family(optimizer, family)
    device = torch.device(device) if device is not None else model_device(model)
    base = [g["lr"] for g in optimizer.param_groups]
    # Param groups keep their ratios to the first group (fine-tuning often uses a smaller LR for the body).
    ratios = [b / base[0] if base[0] > 0 else 1.0 for b in base]
    growth = (end_lr / start_lr) ** (1 / (num_steps - 1))

    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, best = 0.0, math.inf
    stop_reason = "reached end_lr"
    batches = cycle(train_loader)
    count = item_counter(loss_fn, num_items)
    with preserved(model, optimizer):
        model.train()
        for step in range(num_steps):
            lr = start_lr * growth**step
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            optimizer.zero_grad(set_to_none=True)
            window = [next(batches) for _ in range(accumulation_steps)]
            total = float(accumulate(model, window, loss_fn, step_fn, device, count))  # one host sync per step
            lrs.append(lr)
            losses.append(total)
            if not math.isfinite(total):
                stop_reason = f"loss became {total} at lr={lr:.3g}"
                break
            avg = smoothing * avg + (1 - smoothing) * total
            smoothed.append(avg / (1 - smoothing ** (step + 1)))
            if progress is not None:
                progress(step + 1, num_steps, lr, smoothed[-1])
            best = min(best, smoothed[-1])
            if step > 0 and _diverged(smoothed[-1], best, smoothed[0], diverge_threshold):
                stop_reason = f"loss diverged at lr={lr:.3g} ({smoothed[-1]:.4g} vs best {best:.4g})"
                break
            optimizer.step()

    finite = len(smoothed)
    if finite < 5:
        raise GradpilotError(
            f"the range test stopped after {finite} usable steps ({stop_reason}): lower start_lr "
            f"(now {start_lr:g}) so the sweep starts where training is stable"
        )
    curve = suggest.Curve(np.array(lrs[:finite]), np.array(losses[:finite]), np.array(smoothed), resolved)
    alternatives = {name: f(curve) for name, f in suggest.RULES.items()}
    log.info("range test: %d steps, %s; suggestion %.3g (%s)", len(lrs), stop_reason, alternatives[rule], rule)
    return LRFinderResult(
        lrs=tuple(lrs),
        losses=tuple(losses),
        smoothed_losses=tuple(smoothed),
        suggestion=alternatives[rule],
        rule=rule,
        alternatives=alternatives,
        stopped_early=stop_reason != "reached end_lr",
        stop_reason=stop_reason,
    )


def _family(optimizer: torch.optim.Optimizer, family: str | None) -> Literal["sgd", "adaptive"]:
    """How the optimizer steps, as given or read off its class; one gradpilot cannot place is asked about."""
    found = family if family is not None else optimizer_family(type(optimizer).__name__)
    if found == "unknown":
        raise GradpilotError(f"cannot tell whether {type(optimizer).__name__} steps like SGD or like Adam: "
                             "pass family='sgd' or family='adaptive' (--family on the command line)")
    if found == "sgd":
        return "sgd"
    if found == "adaptive":
        return "adaptive"
    raise GradpilotError(f"family must be 'sgd' or 'adaptive', got {family!r}")


def _diverged(current: float, best: float, first: float, threshold: float) -> bool:
    """True once the smoothed loss has risen ``threshold`` times as far above its best as makes sense.

    For positive losses this is the usual ``current > threshold * best``; for losses that can go negative
    the rise is measured against the distance the loss has already fallen from where it started.
    """
    if best > 0:
        return current > threshold * best
    return current - best > (threshold - 1) * max(abs(first - best), abs(best), 1e-12)
