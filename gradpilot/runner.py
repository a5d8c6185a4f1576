"""The seam every short run goes through — the search's candidates, the probe's branches, a Ray trial: a
``Run`` trains from given weights (and optimizer state) at a ``Setting``, continues to a number of items,
scores itself on a cooldown branch that is then thrown away, saves and resumes, and says what it cost in
items and seconds. ``LocalRun`` trains in this process with gradpilot's one optimizer step
(``accumulation.optimizer_step``) and its one LR function (``lr_factor.wsd``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader

from gradpilot import _checkpoint, lr_factor, precision
from gradpilot._batch import model_device
from gradpilot._direction import worst
from gradpilot._state import preserved
from gradpilot.accumulation import item_counter, optimizer_step
from gradpilot.evaluation import evaluate_both
from gradpilot.task import Task


@dataclass(frozen=True)
class Setting:
    """What a run trains at: an LR (the optimizer's first param group; the others keep their ratio to it) at a
    micro-batch and accumulation (their product: the batch), after a linear warmup of ``warmup_samples`` items."""

    lr: float
    micro_batch: int
    accumulation: int = 1
    warmup_samples: int = 0

    @property
    def batch(self) -> int:
        return self.micro_batch * self.accumulation


@dataclass
class Cost:
    """What a run has cost: items trained (its cooldown branches included) and seconds, by what they went on."""

    samples: int = 0
    training: float = 0.0
    evaluation: float = 0.0
    io: float = 0.0

    @property
    def seconds(self) -> float:
        return self.training + self.evaluation + self.io


class Run(Protocol):
    """One short run, wherever it trains."""

    samples: int  # items the run itself has trained on (its branches not included)
    cost: Cost

    def advance(self, to_samples: int) -> None: ...

    def score(self, cooldown_samples: int) -> float: ...

    def save(self, path: Path) -> None: ...

    def load(self, path: Path) -> None: ...


class LocalRun:
    """A run trained in this process on the task's model, from ``weights`` (and ``optimizer_state``, to go on
    from a checkpoint); ``seed`` fixes the order of its data."""

    def __init__(self, task: Task, setting: Setting, *, seed: int, weights: dict[str, torch.Tensor],
                 optimizer_state: dict[str, Any] | None = None) -> None:
        self.task, self.setting, self.seed = task, setting, seed
        task.model.load_state_dict(weights)
        self.optimizer = task.make_optimizer(setting.lr)
        self.peaks = [float(g["lr"]) for g in self.optimizer.param_groups]  # each group's LR at this setting
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
        self.device = model_device(task.model)
        self.count = item_counter(task.loss_fn, None)
        self.precision = precision.check(task.precision, "Task.precision")
        self.scaler = precision.scaler_for(self.device, self.precision)
        self.batches = _endless(task, setting.micro_batch, seed)
        self.warmup_steps = math.ceil(setting.warmup_samples / setting.batch)
        self.steps = self.samples = 0
        self.cost = Cost()
        self.last_loss = math.nan  # the validation loss at the last score

    def advance(self, to_samples: int) -> None:
        """Train at the setting's constant LR (after its warmup) until ``to_samples`` items have been seen."""
        start = time.perf_counter()
        while self.samples < to_samples:
            self._step(lr_factor.warmup(self.steps, self.warmup_steps) if self.warmup_steps else 1.0, self.batches)
            self.steps += 1
            self.samples += self.setting.batch
        self.cost.training += time.perf_counter() - start

    def score(self, cooldown_samples: int) -> float:
        """The validation metric after a cooldown of ``cooldown_samples`` items (``lr_factor.cooldown``) on a
        branch: the run is then put back exactly as it was (weights, optimizer, RNG), though the branch's
        items and seconds count in its cost."""
        steps = math.ceil(cooldown_samples / self.setting.batch)
        branch = _endless(self.task, self.setting.micro_batch, self.seed + 7919 * (1 + self.steps))  # own data
        with preserved(self.task.model, self.optimizer):
            start = time.perf_counter()
            for i in range(steps):
                self._step(lr_factor.cooldown(i + 1, steps + 1), branch)
            middle = time.perf_counter()
            value = self._evaluate()
            self.cost.training += middle - start
            self.cost.evaluation += time.perf_counter() - middle
        return value if math.isfinite(value) else worst(self.task.higher_is_better)

    def _evaluate(self) -> float:
        """The task's validation score; the validation loss of the same pass is kept in ``last_loss``."""
        task = self.task
        loader = task.val_loader()
        if loader is None:
            raise ValueError("scoring a run needs the task's validation data")
        loss, metric = evaluate_both(task.model, loader, task.loss_fn, task.metric, step_fn=task.step_fn,
                                     device=self.device)
        self.last_loss = loss
        return loss if metric is None else metric

    def save(self, path: Path) -> None:
        """The run as it stands (weights, optimizer, counters), in gradpilot's checkpoint format."""
        start = time.perf_counter()
        state = {"model": self.task.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "counters": torch.tensor([self.steps, self.samples, self.cost.samples])}
        _checkpoint.save_file(path, state)
        self.cost.io += time.perf_counter() - start

    def load(self, path: Path) -> None:
        """Continue a saved run: its weights, optimizer, counters, and its place in the data."""
        start = time.perf_counter()
        state = _checkpoint.load_file(path, "delete it to run this candidate again")
        self.task.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps, self.samples, self.cost.samples = (int(x) for x in state["counters"])
        for _ in range(self.steps * self.setting.accumulation):
            next(self.batches)
        self.cost.io += time.perf_counter() - start

    def _set_lr(self, factor: float) -> None:
        for group, peak in zip(self.optimizer.param_groups, self.peaks, strict=True):
            group["lr"] = peak * factor

    def _step(self, factor: float, batches: Iterator[Any]) -> None:
        self._set_lr(factor)
        self.task.model.train()
        window = [next(batches) for _ in range(self.setting.accumulation)]
        optimizer_step(self.task.model, self.optimizer, window, self.task.loss_fn, self.task.step_fn, self.device,
                       self.count, max_grad_norm=self.task.max_grad_norm, precision=self.precision,
                       scaler=self.scaler)
        self.cost.samples += self.setting.batch


def _endless(task: Task, micro_batch: int, seed: int) -> Iterator[Any]:
    """Full micro-batches of the task's training set, reshuffled every epoch, for ever."""
    dataset, collate = task.dataset()
    for epoch in range(10**9):
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        loader = DataLoader(dataset, batch_size=micro_batch, shuffle=True, generator=gen, collate_fn=collate,
                            drop_last=len(dataset) >= micro_batch)  # type: ignore[arg-type]
        yield from loader
    raise AssertionError("unreachable")
