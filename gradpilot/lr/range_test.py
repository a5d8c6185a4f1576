"""The LR range test: sweep the learning rate exponentially, watch the loss, suggest a learning rate."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from gradpilot import _validate
from gradpilot.errors import GradpilotError
from gradpilot.lr import suggest
from gradpilot.scaling import optimizer_family
from gradpilot.train.accumulation import NumItems, StepParts, optimizer_step
from gradpilot.train.batches import LossFn, StepFn, check_trains, cycle
from gradpilot.train.precision import check as check_precision
from gradpilot.train.precision import skipped
from gradpilot.train.state import preserved
from gradpilot.train.task import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LRFinderResult:
    """What a range test saw: the swept LRs, raw and smoothed losses, and the suggested LR.

    ``interval`` is the range of LRs the curve supports (low, high) and ``confidence`` (0 to 1) how clearly it
    supports the suggestion; ``caveat`` says why confidence is low. ``edge`` is the largest LR whose loss stayed
    within noise of the curve's minimum. A range test sees the training loss over a few steps only: where the
    best LR is set by overfitting over many epochs, only validation (``gradpilot.tune``) can find it.
    """

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed_losses: tuple[float, ...]
    suggestion: float
    rule: str
    interval: tuple[float, float]
    confidence: float
    edge: float
    alternatives: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    stop_reason: str = "reached end_lr"
    caveat: str = ""

    def plot(self, path: str | Path) -> Path:
        """Draw the curve with every rule's pick marked and save it as an image at ``path``."""
        from gradpilot.plots import plot_lr_curve

        return plot_lr_curve(self, Path(path))


MAX_STEPS = 10_000  # a range test's steps at most: past this it is a training run, and would seem to hang
MAX_MICRO_BATCHES = 100_000  # forward-backward passes a range test may take, accumulation included
MAX_SKIPS = 8  # fp16 overflows taken again at one LR before the sweep moves on (the scaler halves its scale each)


def _check_args(start_lr: float, end_lr: float, num_steps: int, accumulation_steps: int,
                diverge_threshold: float, smoothing: float) -> None:
    _validate.positive_float("start_lr", start_lr)
    _validate.positive_float("end_lr", end_lr)
    if start_lr >= end_lr:
        raise GradpilotError(f"start_lr must be below end_lr, got {start_lr=} >= {end_lr=}; swap them")
    if _validate.positive_int("num_steps", num_steps) < 10:
        raise GradpilotError(f"num_steps must be at least 10 to draw a curve, got {num_steps=}")
    if num_steps > MAX_STEPS:
        raise GradpilotError(f"num_steps={num_steps:,} is more than a range test needs (at most {MAX_STEPS:,}; "
                             "100 to 300 is usual): the curve is no sharper for more")
    if _validate.positive_int("accumulation_steps", accumulation_steps) * num_steps > MAX_MICRO_BATCHES:
        raise GradpilotError(f"num_steps × accumulation_steps = {num_steps * accumulation_steps:,} micro-batches, "
                             f"more than the {MAX_MICRO_BATCHES:,} a range test may take: use fewer of either")
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
    max_grad_norm: float | None = None,
    precision: str | None = None,
) -> LRFinderResult:
    """Run an LR range test and suggest a learning rate; the model and optimizer are left untouched.

    ``model`` may be a ``gradpilot.Task``: its model, a fresh optimizer, its loss and its training batches.

    The LR grows exponentially from ``start_lr`` to ``end_lr`` over ``num_steps`` optimizer steps and the
    sweep stops once the smoothed loss passes ``diverge_threshold`` times its best or is not finite.
    ``accumulation_steps`` micro-batches make one step, weighted by their items as in ``fit`` (count them
    with ``num_items(batch)`` when gradpilot cannot), clipped at ``max_grad_norm`` and in ``precision`` (a
    Task's own by default; a step the fp16 loss scaler skips is taken again at the same LR).
    ``family`` ("sgd" or "adaptive") tells the rules how
    the optimizer steps; by default it is read off the optimizer's class name.
    """
    if isinstance(model, Task):
        optimizer = optimizer if optimizer is not None else model.make_optimizer()
        loss_fn = loss_fn if loss_fn is not None else model.loss_fn
        step_fn = step_fn if step_fn is not None else model.step_fn
        train_loader = train_loader if train_loader is not None else model.train_loader()
        max_grad_norm = max_grad_norm if max_grad_norm is not None else model.max_grad_norm
        precision = precision if precision is not None else model.precision
        model = model.model
    if optimizer is None or train_loader is None:
        raise GradpilotError("find_lr needs an optimizer and a train_loader, or a gradpilot.Task")
    _check_args(start_lr, end_lr, num_steps, accumulation_steps, diverge_threshold, smoothing)
    suggest.get_rule(rule)  # fail fast on an unknown name
    resolved = _family(optimizer, family)
    sweep = _Sweep(start_lr, end_lr, num_steps, smoothing, diverge_threshold, progress)
    check_trains(model, optimizer)
    parts = StepParts.assemble(model, optimizer, loss_fn=loss_fn, step_fn=step_fn, num_items=num_items,
                               device=torch.device(device) if device is not None else None,
                               max_grad_norm=max_grad_norm, precision=check_precision(precision or "fp32"))
    step = _Step(parts, cycle(train_loader), accumulation_steps)
    momentum = suggest.momentum_of(optimizer.param_groups[0])
    with preserved(model, optimizer):
        model.train()
        sweep.run(step)
    return _result(sweep, rule, resolved, momentum)


class _Step:
    """One optimizer step of the sweep at a given LR: every param group keeps its ratio to the first (a
    fine-tuned body with a smaller LR keeps it smaller); its micro-batches are accumulated as ``fit`` does."""

    def __init__(self, parts: StepParts, batches: Iterator[Any], accumulation_steps: int) -> None:
        self.parts, self.batches, self.accumulation_steps = parts, batches, accumulation_steps
        self.skipped = False  # whether the fp16 scaler skipped the last step (an overflow)
        first = parts.optimizer.param_groups[0]["lr"]
        self.ratios = [g["lr"] / first if first > 0 else 1.0 for g in parts.optimizer.param_groups]

    def at(self, lr: float) -> float:
        """One optimizer step at ``lr`` on the next batches (gradpilot's one step: clipped where the task clips),
        and its accumulated loss — read before the step moved the weights."""
        for group, ratio in zip(self.parts.optimizer.param_groups, self.ratios, strict=True):
            group["lr"] = lr * ratio
        window = [next(self.batches) for _ in range(self.accumulation_steps)]
        scaler = self.parts.scaler
        scale = float(scaler.get_scale()) if scaler is not None else 0.0
        loss = optimizer_step(self.parts, window)
        self.skipped = skipped(scaler, scale)
        return float(loss)  # one host sync per step: the sweep decides on it


@dataclass
class _Sweep:
    """The exponential LR sweep and the curve it records, with the bias-corrected moving average."""

    start_lr: float
    end_lr: float
    num_steps: int
    smoothing: float
    diverge_threshold: float
    progress: Callable[[int, int, float, float], None] | None
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stop_reason: str = "reached end_lr"

    def run(self, step: _Step) -> None:
        growth = (self.end_lr / self.start_lr) ** (1 / (self.num_steps - 1))
        avg, best = 0.0, math.inf
        for i in range(self.num_steps):
            lr = self.start_lr * growth**i
            loss = step.at(lr)
            for _ in range(MAX_SKIPS):  # an fp16 step the scaler skipped moved nothing: take it again here
                if not step.skipped:
                    break
                loss = step.at(lr)
            self.lrs.append(lr)
            self.losses.append(loss)
            if not math.isfinite(loss):
                self.stop_reason = f"loss became {loss} at lr={lr:.3g}"
                return
            avg = self.smoothing * avg + (1 - self.smoothing) * loss
            self.smoothed.append(avg / (1 - self.smoothing ** (i + 1)))
            if self.progress is not None:
                self.progress(i + 1, self.num_steps, lr, self.smoothed[-1])
            best = min(best, self.smoothed[-1])
            if i > 0 and _diverged(self.smoothed[-1], best, self.smoothed[0], self.diverge_threshold):
                self.stop_reason = f"loss diverged at lr={lr:.3g} ({self.smoothed[-1]:.4g} vs best {best:.4g})"
                return


def _result(sweep: _Sweep, rule: suggest.RuleName, family: Literal["sgd", "adaptive"],
            momentum: float) -> LRFinderResult:
    """Every rule's pick from the finite part of the curve; the chosen rule's is the suggestion."""
    finite = len(sweep.smoothed)
    if finite == 0:
        raise GradpilotError(
            f"the loss was NaN or inf at the range test's first step, before any learning rate acted "
            f"({sweep.stop_reason}): the data, the loss function or the model's initial weights give it — check "
            "for a NaN or inf in the inputs or targets, or a log of 0 in the loss"
        )
    if finite < 5:
        raise GradpilotError(
            f"the range test stopped after {finite} usable steps ({sweep.stop_reason}): lower start_lr "
            f"(now {sweep.start_lr:g}) so the sweep starts where training is stable"
        )
    curve = suggest.Curve(np.array(sweep.lrs[:finite]), np.array(sweep.losses[:finite]), np.array(sweep.smoothed),
                          family, momentum)
    alternatives = {name: f(curve) for name, f in suggest.RULES.items()}
    reading = suggest.read(curve)
    log.info("range test: %d steps, %s; suggestion %.3g (%s), interval %.3g-%.3g, confidence %.2f",
             len(sweep.lrs), sweep.stop_reason, alternatives[rule], rule, *reading.interval, reading.confidence)
    low, high = reading.interval
    interval = (min(low, alternatives[rule]), max(high, alternatives[rule]))  # another rule's pick may lie outside
    return LRFinderResult(lrs=tuple(sweep.lrs), losses=tuple(sweep.losses), smoothed_losses=tuple(sweep.smoothed),
                          suggestion=alternatives[rule], rule=rule, interval=interval,
                          confidence=reading.confidence, edge=reading.edge, alternatives=alternatives,
                          stopped_early=sweep.stop_reason != "reached end_lr", stop_reason=sweep.stop_reason,
                          caveat=reading.caveat)


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
