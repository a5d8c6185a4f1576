"""Real training runs for the diagnosis benchmark, with labels from what is objectively true of each run.

Each task trains with constant LRs at multiples of its grid optimum (×1/30 … ×300), on full data and on a
small slice for many epochs, and with cosine decay at the good LRs; 2 seeds. Runs are cached in
benchmarks/results/diagnose_runs.json (resumable).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lr_corpus import TASKS

import gradpilot

CACHE = Path(__file__).parent / "results" / "diagnose_runs.json"
# task name -> (base LR from the LR benchmark's grid, epochs on full data)
DESIGN = {
    "spirals-mlp-adamw": (1e-2, 8),
    "digits-cnn-sgdm": (4.6e-2, 8),
    "friedman-mlp-sgd": (4.6e-2, 6),
    "digits-bnmlp-adam": (1e-2, 8),
}
MULTIPLIERS = (1 / 30, 1 / 10, 1 / 3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
SEEDS = (0, 1)


def run_one(task_name: str, lr: float, epochs: int, seed: int, small: bool, schedule: str | None) -> dict[str, Any]:
    bt = next(t for t in TASKS if t.name == task_name)
    task = bt.make(seed)
    data = task.train_data
    if small:
        data = Subset(data, range(task.batch_size * max(2, len(data) // 10 // task.batch_size)))  # whole batches
    loader = DataLoader(data, batch_size=task.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    untrained = gradpilot.training.evaluate_both(task.model, task.val_loader(), task.loss_fn, task.metric)
    options = {"eta_min": lr / 100} if schedule == "cosine" else None
    result = gradpilot.fit(task.model, task.make_optimizer(lr), task.loss_fn, loader, epochs=epochs,
                           val_loader=task.val_loader(), metric=task.metric, higher_is_better=True,
                           scheduler=schedule, scheduler_options=options)
    clean = lambda xs: [x if math.isfinite(x) else None for x in xs]  # noqa: E731 - JSON has no NaN
    return {"task": task_name, "lr": lr, "epochs": epochs, "seed": seed, "small": small, "schedule": schedule,
            "train_losses": clean(result.train_losses), "lrs": list(result.lrs), "val_losses": clean(result.val_losses),
            "val_metrics": clean(result.val_metrics), "epoch_steps": list(result.epoch_steps),
            "untrained_metric": untrained[1], "untrained_loss": untrained[0]}


def designs() -> list[tuple[str, float, int, int, bool, str | None, float]]:
    out = []
    for name, (base, epochs) in DESIGN.items():
        for seed in SEEDS:
            for m in MULTIPLIERS:
                out.append((name, base * m, epochs, seed, False, None, m))
            for m in (1 / 3, 1.0, 3.0):
                out.append((name, base * m, epochs, seed, False, "cosine", m))
            for m in (1 / 3, 1.0):
                out.append((name, base * m, epochs * 5, seed, True, None, m))
    return out


def load_runs(progress: bool = True) -> list[dict[str, Any]]:
    cache: dict[str, Any] = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    runs = []
    todo = designs()
    for i, (name, lr, epochs, seed, small, schedule, m) in enumerate(todo):
        key = f"{name}|{lr:.4e}|{epochs}|{seed}|{small}|{schedule}"
        if key not in cache:
            if progress:
                print(f"[{i + 1}/{len(todo)}] {key}", flush=True)
            torch.set_num_threads(2)
            cache[key] = run_one(name, lr, epochs, seed, small, schedule)
            CACHE.parent.mkdir(parents=True, exist_ok=True)
            tmp = CACHE.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache))
            tmp.replace(CACHE)
        runs.append({**cache[key], "multiplier": m})
    return runs


def nan_list(xs: list[float | None]) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in xs], float)


if __name__ == "__main__":
    print(len(load_runs()), "runs")
