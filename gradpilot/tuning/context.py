"""A tune in progress: the task, where its work is kept, the budget, what the stages decided (typed,
``state.Decided``) and what they spent (a ``Cost``, summed from their records: charged once)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from optuna.storages import BaseStorage

from gradpilot.train.seam import Cost
from gradpilot.train.task import Task
from gradpilot.tuning.budget import MARGIN, Purse, fixed_clock
from gradpilot.tuning.state import Clock, Decided


@dataclass
class Context:
    """A tune in progress. The budget is ``budget`` runs of the task, or ``time_budget`` seconds where given;
    both are counted in items and in measured seconds once the clock has run."""

    task: Task
    out: Path
    seed: int
    fixed: dict[str, Any]
    cooldown: float
    train_items: int
    budget: float | None  # runs (None: the time budget rules)
    time_budget: float | None  # seconds
    initial: dict[str, torch.Tensor]
    storage: BaseStorage
    prefix: str  # the study names' prefix: workers given the same storage and prefix share the work
    progress: Callable[[str, float], None] | None
    wait: Callable[[], None] | None = None  # called while a worker waits on others (the n_jobs parent watches them)
    on_ray: bool = False  # the search's short runs as Ray Tune trials
    ray_address: str | None = None
    decided: Decided = field(default_factory=Decided)
    spent: Cost = field(default_factory=Cost)
    settings: dict[str, Any] = field(default_factory=dict)  # what a resume must match, as JSON
    task_weights: str = ""  # a digest of the weights the task's model came with, before tune touched them

    @property
    def run_items(self) -> int:
        """Items one run of the task trains on: the unit of the budget."""
        return self.train_items * self.task.epochs

    @property
    def clock(self) -> Clock:
        clock: Clock = self.decided.need("clock")
        return clock

    @property
    def budget_runs(self) -> float:
        """The budget in runs: as given, or the time budget over one run's measured seconds."""
        if self.budget is not None:
            return self.budget
        if self.decided.clock is None or self.time_budget is None:
            return math.nan
        return self.time_budget / max(self.decided.clock.run_seconds, 1e-9)

    @property
    def budget_seconds(self) -> float:
        if self.time_budget is not None:
            return self.time_budget
        return self.budget_runs * self.clock.run_seconds

    @property
    def budget_items(self) -> float:
        return self.budget_runs * self.run_items

    @property
    def charged(self) -> float:
        """The seconds charged to the budget so far: the runs' measured work, or, where the clock is fixed
        (``budget.FIXED_CLOCK``), what the clock says their items and validations cost (so that it stands for the
        machine everywhere, and two tunes of a task plan alike)."""
        if fixed_clock() is None or self.decided.clock is None:
            return self.spent.work
        return self.clock.seconds(self.spent.items, self.spent.validations)

    @property
    def left_items(self) -> float:
        return self.budget_items - self.spent.items

    def purse(self) -> Purse:
        """What the rest of the work may plan on: what is left of the budget in seconds of work (less a margin for
        what plans round) and in items."""
        seconds = MARGIN * self.budget_seconds - self.charged
        return Purse(seconds, self.left_items, self.clock)

    @property
    def spent_runs(self) -> float:
        """What is spent, in runs: the runs' measured seconds over one run's (or items, where more), or items before
        the clock ran."""
        if self.decided.clock is None:
            return self.spent.items / self.run_items
        return max(self.charged / self.clock.run_seconds, self.spent.items / self.run_items)

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message, self.spent_runs)

