"""A validation pass: mean loss and metric over a loader, weighted by the items in each batch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gradpilot.errors import GradpilotError
from gradpilot.train.accumulation import NumItems, item_counter
from gradpilot.train.batches import (
    LossFn,
    StepFn,
    _logits,
    check_scalar,
    compute_loss,
    forward,
    model_device,
    split_batch,
    to_device,
)
from gradpilot.train.distributed import world
from gradpilot.train.task import Task

Metric = Callable[[Any, Any], float]


def evaluate(model: nn.Module | Task, loader: Iterable[Any] | None = None, loss_fn: LossFn | None = None,
             metric: Metric | None = None, *, step_fn: StepFn | None = None, num_items: NumItems | None = None,
             device: str | torch.device | None = None) -> float:
    """Mean validation metric (or loss when ``metric`` is None) over ``loader``, weighted by items per batch.

    ``model`` may be a ``gradpilot.Task``: its model, validation data, loss and metric."""
    if isinstance(model, Task):
        loader = loader if loader is not None else model.val_loader()
        loss_fn = loss_fn if loss_fn is not None else model.loss_fn
        step_fn = step_fn if step_fn is not None else model.step_fn
        metric = metric if metric is not None else model.metric
        model = model.model
    if loader is None:
        raise GradpilotError("evaluate needs a loader (the task has no validation data)")
    loss, value = evaluate_both(model, loader, loss_fn, metric, step_fn=step_fn, num_items=num_items, device=device)
    return loss if value is None else value


def evaluate_both(model: nn.Module, loader: Iterable[Any], loss_fn: LossFn | None, metric: Metric | None = None, *,
                  step_fn: StepFn | None = None, num_items: NumItems | None = None,
                  device: str | torch.device | None = None) -> tuple[float, float | None]:
    """Validation loss and metric from one pass over ``loader`` — one forward per batch (the metric is None
    when not asked for)."""
    dev = torch.device(device) if device is not None else model_device(model)
    count = item_counter(loss_fn, num_items)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=dev)  # loss × items, metric × items, items
    try:
        with torch.no_grad():
            for batch in loader:
                n = count(batch)
                loss, value = _batch_loss_and_metric(model, to_device(batch, dev), loss_fn, metric, step_fn)
                sums += torch.stack([loss.double() * n, torch.as_tensor(value, dtype=torch.float64, device=dev) * n,
                                     torch.as_tensor(n, dtype=torch.float64, device=dev)])
    finally:
        model.train(was_training)
    if world()[0] > 1:
        dist.all_reduce(sums)
    if sums[2].item() == 0:
        raise GradpilotError("the validation loader yielded no items: check the validation dataset is not empty")
    loss_mean, metric_mean = (sums[:2] / sums[2]).tolist()
    return loss_mean, (metric_mean if metric is not None else None)


def _batch_loss_and_metric(model: nn.Module, batch: Any, loss_fn: LossFn | None, metric: Metric | None,
                           step_fn: StepFn | None) -> tuple[torch.Tensor, float]:
    if metric is None:
        return compute_loss(model, batch, loss_fn, step_fn), 0.0
    pair = split_batch(batch)
    if pair is None:
        raise GradpilotError("a validation metric needs (inputs, targets) or dict batches with a 'labels' key; "
                             "pass metric=None to validate on the loss")
    inputs, targets = pair
    if step_fn is not None:  # the user's step computes the loss; the metric reads the outputs of that same forward
        outputs: list[Any] = []
        handle = model.register_forward_hook(lambda _m, _i, out: outputs.append(out))
        try:
            loss = compute_loss(model, batch, loss_fn, step_fn)
        finally:
            handle.remove()
        out = _logits(outputs[-1]) if outputs else forward(model, inputs)
        return loss, metric(out, targets)
    if loss_fn is None and isinstance(batch, dict):  # a model that computes its own loss (Hugging Face style)
        output = model(**batch)
        if getattr(output, "loss", None) is None:
            raise GradpilotError("the model returned no .loss for a dict batch: pass loss_fn, or step_fn")
        return check_scalar(output.loss), metric(_logits(output), targets)
    if loss_fn is None:
        raise GradpilotError("loss_fn is None: pass a loss function, or step_fn(model, batch) -> loss")
    out = forward(model, inputs)
    return check_scalar(loss_fn(out, targets)), metric(out, targets)
