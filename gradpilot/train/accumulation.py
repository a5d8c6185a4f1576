"""Gradient accumulation that equals the large batch: item-weighted micro-batches, short last windows, no_sync."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gradpilot.errors import GradpilotError
from gradpilot.train.batches import LossFn, StepFn, compute_loss, model_device, split_batch, to_device
from gradpilot.train.distributed import comm_device
from gradpilot.train.precision import Precision, autocast, scaler_for

NumItems = Callable[[Any], "int | torch.Tensor"]


def windows(batches: Iterable[Any], steps: int) -> Iterator[list[Any]]:
    """Group an epoch's batches into windows of ``steps``; the last window holds whatever is left."""
    window: list[Any] = []
    for batch in batches:
        window.append(batch)
        if len(window) == steps:
            yield window
            window = []
    if window:
        yield window


def item_counter(loss_fn: Any, num_items: NumItems | None) -> NumItems:
    """How to count the items a batch's mean loss averages over.

    A user's ``num_items(batch)`` wins; ``CrossEntropyLoss``/``NLLLoss`` count the targets that are not
    ``ignore_index``; otherwise the number of samples (the targets' first dimension).
    """
    if num_items is not None:
        return num_items
    ignore = getattr(loss_fn, "ignore_index", None) if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)) else None
    if ignore is not None and getattr(loss_fn, "reduction", "mean") != "mean":
        raise GradpilotError(f"accumulation needs a mean-reduced loss, got reduction={loss_fn.reduction!r}")

    def count(batch: Any) -> int | torch.Tensor:
        pair = split_batch(batch)
        targets = None if pair is None else pair[1]
        if isinstance(targets, torch.Tensor):
            if ignore is not None and not targets.is_floating_point():
                kept: torch.Tensor = (targets != ignore).sum()  # a tensor: counting on the device needs no sync
                return kept
            return targets.shape[0] if targets.dim() else 1
        first = batch[0] if isinstance(batch, (list, tuple)) and batch else None
        if isinstance(first, torch.Tensor) and first.dim():
            return first.shape[0]
        raise GradpilotError("cannot count the items in this batch for accumulation: pass num_items(batch)")

    return count


def micro_weights(counts: list[int | torch.Tensor], world_size: int = 1) -> list[torch.Tensor | float]:
    """Each micro-batch's share of the window's items, so that summed gradients equal the large batch's mean.

    Under data parallel the window's items are summed over all processes, and the shares are multiplied by
    the world size because DDP averages gradients across processes.
    """
    if len(counts) == 1 and world_size == 1:
        return [1.0]  # a lone batch's mean is already the window's mean
    total: int | torch.Tensor = sum(counts)
    if world_size > 1:
        reduced = torch.as_tensor(total, dtype=torch.float64, device=comm_device())
        dist.all_reduce(reduced)
        total = reduced
    return [c * world_size / total for c in counts]


def sync_contexts(model: nn.Module) -> Callable[[bool], contextlib.AbstractContextManager[Any]]:
    """For a window's micro-steps: ``model.no_sync()`` unless it is the last one, so DDP all-reduces once per window."""
    no_sync = model.no_sync if isinstance(model, nn.parallel.DistributedDataParallel) else None
    null = contextlib.nullcontext()

    def context(last_micro_step: bool) -> contextlib.AbstractContextManager[Any]:
        return null if last_micro_step or no_sync is None else no_sync()

    return context


SyncContext = Callable[[bool], contextlib.AbstractContextManager[Any]]


def accumulate(parts: StepParts, window: list[Any]) -> torch.Tensor:
    """Forward and backward one window of micro-batches; the gradients add up to the large batch's.

    Every caller that accumulates runs this (through ``optimizer_step``), so ``accumulation_steps`` means the same
    thing everywhere. Returns the window's item-weighted mean loss, detached and still on the device.
    """
    single = len(window) == 1 and parts.world_size == 1
    weights = [1.0] if single else micro_weights([parts.count(b) for b in window], parts.world_size)
    total: torch.Tensor | None = None
    for j, batch in enumerate(window):
        last = j == len(window) - 1
        with parts.sync_context(last) if parts.sync_context is not None else contextlib.nullcontext():
            with autocast(parts.device, parts.precision):
                loss = compute_loss(parts.model, to_device(batch, parts.device), parts.loss_fn, parts.step_fn)
            # each micro-batch's share of the window's items: the weighted sum is the large batch's mean
            scaled = loss if single else loss * weights[j]
            scaled = scaled if parts.precision == "fp32" else scaled.float()  # the sum in full precision
            (scaled if parts.scaler is None else parts.scaler.scale(scaled)).backward()  # type: ignore[no-untyped-call]
        total = scaled.detach() if total is None else total + scaled.detach()
    if total is None:
        raise GradpilotError("an accumulation window holds no batch")
    return total


@dataclass(frozen=True)
class StepParts:
    """What gradpilot's one optimizer step needs, assembled once per run (``assemble``): the model the forward runs
    through (DDP-wrapped under data parallel), the optimizer, how a batch becomes a loss and how its items are
    counted, where batches go, clipping, precision and its loss scaler, and the processes the items are summed
    over."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn | None
    step_fn: StepFn | None
    device: torch.device
    count: NumItems
    max_grad_norm: float | None = None
    precision: Precision = "fp32"
    scaler: torch.amp.GradScaler | None = None
    world_size: int = 1
    sync_context: SyncContext | None = None

    @staticmethod
    def assemble(model: nn.Module, optimizer: torch.optim.Optimizer, *, loss_fn: LossFn | None = None,
                 step_fn: StepFn | None = None, device: torch.device | None = None, num_items: NumItems | None = None,
                 max_grad_norm: float | None = None, precision: Precision = "fp32", world_size: int = 1) -> StepParts:
        """The parts for ``model`` (on ``device``, by default its own) and ``optimizer``."""
        where = device if device is not None else model_device(model)
        return StepParts(model, optimizer, loss_fn, step_fn, where, item_counter(loss_fn, num_items), max_grad_norm,
                         precision, scaler_for(where, precision), world_size, sync_contexts(model))


def optimizer_step(parts: StepParts, window: list[Any]) -> torch.Tensor:
    """gradpilot's one optimizer step — ``fit``, tune's runs, the probe's branches, the range test and the batch
    trials take it: clear the gradients, accumulate the window's micro-batches (the forward under autocast to the
    parts' precision, the backward scaled for fp16), clip the gradient norm (of the unscaled gradients), step (the
    scaler skips a step whose gradients overflowed), and let the gradients go. Returns the window's mean loss,
    detached, still on the device (no host sync)."""
    optimizer, scaler = parts.optimizer, parts.scaler
    optimizer.zero_grad(set_to_none=True)
    loss = accumulate(parts, window)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if parts.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), parts.max_grad_norm)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss
