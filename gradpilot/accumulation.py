"""Gradient accumulation that equals the large batch: item-weighted micro-batches, short last windows, no_sync."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gradpilot._batch import TARGET_KEYS
from gradpilot.errors import GradpilotError

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


def _targets(batch: Any) -> Any:
    if isinstance(batch, Mapping):
        return next((batch[k] for k in TARGET_KEYS if k in batch), None)
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[1]
    return None


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
        targets = _targets(batch)
        if isinstance(targets, torch.Tensor):
            if ignore is not None and not targets.is_floating_point():
                return (targets != ignore).sum()  # a tensor: counting on the device needs no host sync
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
    total: int | torch.Tensor = sum(counts)  # type: ignore[assignment]
    if world_size > 1:
        reduced = torch.as_tensor(total, dtype=torch.float64, device=comm_device())
        dist.all_reduce(reduced)
        total = reduced
    return [c * world_size / total for c in counts]  # type: ignore[operator]


def comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sync_contexts(model: nn.Module) -> Callable[[bool], contextlib.AbstractContextManager[Any]]:
    """For a window's micro-steps: ``model.no_sync()`` unless it is the last one, so DDP all-reduces once per window."""
    no_sync = model.no_sync if isinstance(model, nn.parallel.DistributedDataParallel) else None
    null = contextlib.nullcontext()

    def context(last_micro_step: bool) -> contextlib.AbstractContextManager[Any]:
        return null if last_micro_step or no_sync is None else no_sync()

    return context
