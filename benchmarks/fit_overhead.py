"""How much does gradpilot.fit add to a hand-written PyTorch loop?

Same model, data, optimizer and batches; runs interleaved. Ratio = fit / hand loop, from the medians and
from the best run of each (the steadier figure on a shared machine).

    python benchmarks/fit_overhead.py [--repeats 7] [--epochs 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradpilot


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


def loader() -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (4096,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(1))


def hand_loop(make, epochs: int) -> float:
    torch.manual_seed(0)
    model, data, loss_fn = make(), loader(), nn.CrossEntropyLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
    return time.perf_counter() - t0


def gradpilot_fit(make, epochs: int) -> float:
    torch.manual_seed(0)
    model, data, loss_fn = make(), loader(), nn.CrossEntropyLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    gradpilot.fit(model, opt, loss_fn, data, epochs=epochs)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    table = Table(title=f"fit overhead ({args.epochs} epochs of 64 steps, median of {args.repeats})")
    for col in ("model", "hand loop (s)", "gradpilot.fit (s)", "ratio (median)", "ratio (best of each)"):
        table.add_column(col, justify="right")
    for name, make in (("MLP 784-256-128-10", mlp), ("CNN 2 conv + linear", cnn)):
        hand_loop(make, 1)  # warm-up
        gradpilot_fit(make, 1)
        hand, ours = [], []
        for _ in range(args.repeats):
            hand.append(hand_loop(make, args.epochs))
            ours.append(gradpilot_fit(make, args.epochs))
        h, o = statistics.median(hand), statistics.median(ours)
        table.add_row(name, f"{h:.3f}", f"{o:.3f}", f"{o / h:.3f}", f"{min(ours) / min(hand):.3f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
