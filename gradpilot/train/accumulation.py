"""Gradient accumulation that equals the large batch: item-weighted micro-batches, short last windows, no_sync."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gradpilot.errors import GradpilotError
from gradpilot.train.batches import LossFn, StepFn, compute_loss, split_batch, to_device
from gradpilot.train.distributed import comm_device
from gradpilot.train.precision import Precision, autocast

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


def accumulate(model: nn.Module, window: list[Any], loss_fn: LossFn | None, step_fn: StepFn | None,
               device: torch.device, count: NumItems, *, world_size: int = 1,
               sync_context: SyncContext | None = None, precision: Precision = "fp32",
               scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """Forward and backward one window of micro-batches; the gradients add up to the large batch's.

    Every caller that accumulates (``fit``, the range test) runs this, so ``accumulation_steps`` means the
    same thing everywhere. Returns the window's item-weighted mean loss, detached and still on the device.
    """
    single = len(window) == 1 and world_size == 1
    weights = [1.0] if single else micro_weights([count(b) for b in window], world_size)
    total: torch.Tensor | None = None
    for j, batch in enumerate(window):
        last = j == len(window) - 1
        with sync_context(last) if sync_context is not None else contextlib.nullcontext():
            with autocast(device, precision):
                loss = compute_loss(model, to_device(batch, device), loss_fn, step_fn)
            # each micro-batch's share of the window's items: the weighted sum is the large batch's mean
            scaled = loss if single else loss * weights[j]
            scaled = scaled if precision == "fp32" else scaled.float()  # the sum in full precision
            (scaled if scaler is None else scaler.scale(scaled)).backward()  # type: ignore[no-untyped-call]
        total = scaled.detach() if total is None else total + scaled.detach()
    if total is None:
        raise GradpilotError("an accumulation window holds no batch")
    return total


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, window: list[Any], loss_fn: LossFn | None,
                   step_fn: StepFn | None, device: torch.device, count: NumItems, *,
                   max_grad_norm: float | None = None, world_size: int = 1,
                   sync_context: SyncContext | None = None, precision: Precision = "fp32",
                   scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """gradpilot's one optimizer step — ``fit``, the range test, the batch trials and every short run take it:
    clear the gradients, accumulate the window's micro-batches (the forward under autocast to ``precision``,
    the backward scaled by ``scaler`` for fp16), clip the gradient norm at ``max_grad_norm`` (of the unscaled
    gradients), step (the scaler skips a step whose gradients overflowed), and let the gradients go. Returns
    the window's mean loss, detached, still on the device."""
    optimizer.zero_grad(set_to_none=True)
    loss = accumulate(model, window, loss_fn, step_fn, device, count, world_size=world_size,
                      sync_context=sync_context, precision=precision, scaler=scaler)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss
