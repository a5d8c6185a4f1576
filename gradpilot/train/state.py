"""Snapshot and restore of what gradpilot borrows: a model, its optimizer and torch's RNGs."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from gradpilot.errors import GradpilotError, describe


@contextmanager
def preserved(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Iterator[None]:
    """Run a block, then put the model (parameters, buffers such as BatchNorm statistics, gradients, train/eval
    modes), the optimizer and torch's RNGs back exactly as they were."""
    params = model_state(model)
    grads = {n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    opt_state = None if optimizer is None else copy.deepcopy(optimizer.state_dict())
    rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        model.load_state_dict(params)
        for n, p in model.named_parameters():
            p.grad = grads[n]
        for n, m in model.named_modules():
            m.training = modes[n]
        if optimizer is not None and opt_state is not None:
            optimizer.load_state_dict(opt_state)
        torch.random.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy, on the CPU, of the model's parameters and buffers (BatchNorm statistics too)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy, on the CPU, of what training changes: the parameters that require grad, and the buffers. For a
    model whose every parameter trains it is the whole state; for an adapter (LoRA) on a frozen model, the
    adapter alone — what a run's weights need to be saved as (``load_weights`` puts them back)."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k not in frozen}


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """``weights`` into ``model``: its whole state, or what trains of it (``trainable_state``), the frozen
    parameters left as they are. Weights of another model are refused in one line."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    missing = set(model.state_dict()) - set(weights)
    try:
        model.load_state_dict(weights, strict=not missing or not missing <= frozen)
    except RuntimeError as exc:
        raise GradpilotError(f"the weights do not fit the model ({describe(exc, 200)}): give the weights of this "
                             "task's model") from None


class Snapshot:
    """A known-good model and optimizer state, kept to roll back to (the autopilot's, after a divergence)."""

    def __init__(self) -> None:
        self.step: int | None = None
        self._model: dict[str, torch.Tensor] | None = None
        self._optimizer: dict[str, Any] | None = None

    def take(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Remember the current state as good."""
        self.step = step
        self._model = model_state(model)
        self._optimizer = copy.deepcopy(optimizer.state_dict())

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
        """Put the remembered state back, keeping the optimizer's current LRs; False when there is none."""
        if self._model is None or self._optimizer is None:
            return False
        model.load_state_dict(self._model)
        load_keeping_lrs(optimizer, self._optimizer)  # the (lowered) LRs, not the old ones
        return True


def load_keeping_lrs(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """``saved`` loaded into ``optimizer`` (a copy: steps update tensors in place), each group's ``lr`` and
    ``initial_lr`` as they were; a state of another shape is refused in one line."""
    kept: list[dict[str, Any]] = [{k: g[k] for k in ("lr", "initial_lr") if k in g} for g in optimizer.param_groups]
    before = copy.deepcopy(optimizer.state_dict())
    try:
        optimizer.load_state_dict(copy.deepcopy(saved))
        _same_shapes(optimizer)
    except (ValueError, KeyError) as exc:
        optimizer.load_state_dict(before)
        raise GradpilotError(f"the checkpoint's optimizer state does not fit the trainer's optimizer ({exc}): "
                             "give the checkpoint of a run of this trainer") from None
    for group, lrs in zip(optimizer.param_groups, kept, strict=True):
        group.update(lrs)


def _same_shapes(optimizer: torch.optim.Optimizer) -> None:
    """Each parameter's state of its own rank has its shape (torch checks only the counts; a factored state,
    of a lower rank, is left be)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() == param.dim() > 0 and value.shape != param.shape:
                    raise ValueError(f"its {name} is {tuple(value.shape)} for a parameter of {tuple(param.shape)}")
