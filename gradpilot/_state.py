"""Snapshot and restore of what gradpilot borrows: a model, its optimizer and torch's RNGs."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def preserved(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Iterator[None]:
    """Run a block, then put the model (parameters, buffers such as BatchNorm statistics, gradients, train/eval
    modes), the optimizer and torch's RNGs back exactly as they were."""
    params = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict(keep_vars=True).items()}
    grads = {n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    opt_state = None if optimizer is None else copy.deepcopy(optimizer.state_dict())
    rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
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
