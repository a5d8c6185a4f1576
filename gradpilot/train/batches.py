"""How a batch becomes a loss: tuples, dicts, Hugging Face outputs, or a user's own step function."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from gradpilot.errors import GradpilotError

StepFn = Callable[[nn.Module, Any], torch.Tensor]
LossFn = Callable[[Any, Any], torch.Tensor]

# Keys users put their targets under in dict batches, in the order we look for them.
TARGET_KEYS = ("labels", "label", "targets", "target", "y")


def check_trains(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Refuse, before any training, a run that would train nothing: an optimizer that holds none of the
    model's parameters, or parameters (the model's, or those of them the optimizer holds) none of which
    requires grad."""
    params = list(model.parameters())
    if optimizer is not None:
        own = {id(p) for p in params}
        params = [p for g in optimizer.param_groups for p in g["params"] if id(p) in own]
        if not params:
            raise GradpilotError("the optimizer holds none of the model's parameters: build it from model.parameters()")
    if not any(p.requires_grad for p in params):
        held = " the optimizer holds" if optimizer is not None else ""
        raise GradpilotError(f"the model has no trainable parameters{held} (a frozen model, or none): "
                             "unfreeze what should train")


def split_batch(batch: Any) -> tuple[Any, Any] | None:
    """``(inputs, targets)`` of an ``(inputs, targets)`` pair or of a dict with its targets under one of
    ``TARGET_KEYS`` (the inputs are then the dict without them); None for any other batch."""
    if type(batch) in (tuple, list):  # the common case first: the ABC checks below cost a microsecond a step
        return (batch[0], batch[1]) if len(batch) == 2 else None
    if isinstance(batch, Mapping):
        key = next((k for k in TARGET_KEYS if k in batch), None)
        return None if key is None else ({k: v for k, v in batch.items() if k != key}, batch[key])
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    return None


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if type(batch) in (tuple, list):  # the common case, checked before the slower ABC tests below
        return type(batch)(to_device(v, device) for v in batch)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _logits(output: Any) -> Any:
    # Hugging Face models return a ModelOutput; the prediction lives in `.logits`.
    return output if isinstance(output, torch.Tensor) else getattr(output, "logits", output)


def compute_loss(model: nn.Module, batch: Any, loss_fn: LossFn | None, step_fn: StepFn | None) -> torch.Tensor:
    """Forward one batch and return its scalar loss, whatever shape the batch has."""
    if step_fn is not None:
        return check_scalar(step_fn(model, batch))
    pair = split_batch(batch)
    if isinstance(batch, Mapping) and (loss_fn is None or pair is None):
        # A model that computes its own loss from the batch (Hugging Face style).
        loss = getattr(model(**batch), "loss", None)
        if loss is None:
            raise GradpilotError(
                f"dict batch with keys {sorted(batch)} gave no loss: put the targets under one of "
                f"{list(TARGET_KEYS)} and pass loss_fn, or pass step_fn(model, batch) -> loss"
            )
        return check_scalar(loss)
    if pair is None:
        raise GradpilotError(
            f"cannot read a batch of type {type(batch).__name__}: yield (inputs, targets) tuples or dicts "
            f"with a {TARGET_KEYS[0]!r} key, or pass step_fn(model, batch) -> loss"
        )
    if loss_fn is None:
        raise GradpilotError("loss_fn is None: pass a loss function, or step_fn(model, batch) -> loss")
    return check_scalar(loss_fn(forward(model, pair[0]), pair[1]))


def forward(model: nn.Module, inputs: Any) -> Any:
    """The model's prediction for ``inputs`` (a dict is passed as keyword arguments; ``.logits`` unwrapped)."""
    if isinstance(inputs, torch.Tensor):
        return _logits(model(inputs))
    return _logits(model(**inputs) if isinstance(inputs, Mapping) else model(inputs))


def check_scalar(loss: Any) -> torch.Tensor:
    """Return ``loss`` if it is a scalar tensor, else raise an error that says how to fix it."""
    if not isinstance(loss, torch.Tensor):
        raise GradpilotError(f"the loss must be a scalar tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise GradpilotError(
            f"the loss must be a scalar, got a tensor of shape {tuple(loss.shape)}: "
            "use reduction='mean' in the loss function or call .mean() in step_fn"
        )
    return loss if loss.dim() == 0 else loss.reshape(())


def cycle(loader: Any) -> Iterator[Any]:
    """Yield batches forever, starting the loader again when it runs out; fail fast if it is empty."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise GradpilotError("the data loader yielded no batches: check the dataset is not empty "
                                 "and that drop_last does not drop its only batch")
