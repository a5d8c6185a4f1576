"""The built-in example task: a small MLP classifying noisy 2-D spirals, made on the fly (no downloads)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import TensorDataset

from gradpilot.train.task import Task


def spirals(n: int, *, classes: int = 3, noise: float = 0.25, seed: int = 0) -> TensorDataset:
    """``n`` points on ``classes`` interleaved spiral arms with Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (n,), generator=gen)
    radius = torch.rand(n, generator=gen)
    angle = 4 * radius + labels * (2 * math.pi / classes) + noise * torch.randn(n, generator=gen)
    points = torch.stack([radius * torch.sin(angle), radius * torch.cos(angle)], dim=1)
    return TensorDataset(points, labels)


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of rows whose arg-max equals the target."""
    return (outputs.argmax(dim=-1) == targets).float().mean().item()


def example_task(seed: int = 0) -> Task:
    """Three-arm spirals, 2,048 training points, a 2-64-64-3 MLP under AdamW."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    return Task(
        model=model,
        train_data=spirals(2048, seed=seed),
        val_data=spirals(1024, seed=seed + 10_000),
        loss_fn=nn.CrossEntropyLoss(),
        metric=accuracy,
        higher_is_better=True,
        optimizer="adamw",
        lr=1e-3,
        batch_size=64,
        epochs=10,
        name="spirals-mlp",
    )
