"""A tune in progress: ``Context``, what stays the same while it runs (the task, its folder, the budget, the
storage its work is shared through), and ``SoFar``, where it stands after each stage — what the stages decided
(``state.Decided``) and what they spent (a ``Cost``, summed from their records: charged once). Both frozen: a
stage reads them and returns a ``Stage``; the driver makes the next ``SoFar``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gradpilot.train.seam import Cost
from gradpilot.tuning.budget import MARGIN, Purse, counted_clock, fixed_clock
from gradpilot.tuning.fixed import Fixed
from gradpilot.tuning.folder import TuneFolder
from gradpilot.tuning.state import Clock, Decided, Stage

if TYPE_CHECKING:
    import torch
    from optuna.storages import BaseStorage

    from gradpilot.train.task import Task
    from gradpilot.tuning.halving import RungBackend


@dataclass(frozen=True)
class Budget:
    """What a tune may spend: ``runs`` of the task (in wall time as measured, and in items), or ``seconds``."""

    runs: float | None
    seconds: float | None


@dataclass(frozen=True)
class Context:
    """What a tune works on and with, the same from its first stage to its last and in every worker."""

    task: Task
    folder: TuneFolder
    seed: int
    fixed: Fixed
    cooldown: float
    budget: Budget
    train_items: int
    initial: dict[str, torch.Tensor]
    storage: BaseStorage
    prefix: str  # the study names' prefix: workers given the same storage and prefix share the work
    settings: dict[str, Any] = field(default_factory=dict)  # what a resume must match, as JSON
    val_items: int = 0  # items in one validation pass (0: unknown)
    called: float = 0.0  # time.perf_counter() when tune was called
    task_weights: str = ""  # a digest of the weights the task's model came with, before tune touched them
    progress: Callable[[str, float], None] | None = None
    wait: Callable[[], None] | None = None  # called while a worker waits on others (the n_jobs parent watches them)
    backend: RungBackend | None = None  # what runs the search's rungs (None: these workers, on the queue)

    @property
    def run_items(self) -> int:
        """Items one run of the task trains on: the unit of the budget."""
        return self.train_items * self.task.epochs


@dataclass(frozen=True)
class SoFar:
    """Where a tune stands: its context, what the stages have decided and what they have spent."""

    ctx: Context
    decided: Decided = field(default_factory=Decided)
    spent: Cost = field(default_factory=Cost)

    def after(self, stage: Stage) -> SoFar:
        """Where the tune stands once ``stage`` is done."""
        return SoFar(self.ctx, self.decided.taking(stage), self.spent + stage.spent)

    def with_clock(self, clock: Clock) -> SoFar:
        """As if the clock had decided ``clock`` (the clock stage checks a time budget with its own figures)."""
        return dataclasses.replace(self, decided=dataclasses.replace(self.decided, clock=clock))

    @property
    def counted(self) -> bool:
        """Whether the budget holds in counts — items trained and validation passes, never seconds — so that a
        task, seed and budget make the same decisions on any machine at any load: a budget in runs. A time budget
        is in seconds, and reads the clock's measurement."""
        return self.ctx.budget.runs is not None or fixed_clock() is not None

    @property
    def clock(self) -> Clock:
        """The clock decisions read: the measured one under a time budget; under a budget in runs, the counted one
        (``budget.counted_clock``: an item trained is one unit, a validation pass its items' forward share)."""
        measured: Clock = self.decided.need("clock")
        if fixed_clock() is not None or self.ctx.budget.runs is None:
            return measured
        return counted_clock(measured, self.ctx.val_items, self.ctx.train_items)

    @property
    def budget_runs(self) -> float:
        """The budget in runs: as given, or the time budget over one run's measured seconds."""
        budget = self.ctx.budget
        if budget.runs is not None:
            return budget.runs
        if self.decided.clock is None or budget.seconds is None:
            return math.nan
        return budget.seconds / max(self.decided.clock.run_seconds, 1e-9)

    @property
    def budget_seconds(self) -> float:
        """The budget in the decisions' clock's units: seconds under a time budget, counted units under one in runs."""
        if self.ctx.budget.seconds is not None:
            return self.ctx.budget.seconds
        return self.budget_runs * self.clock.run_seconds

    @property
    def budget_items(self) -> float:
        return self.budget_runs * self.ctx.run_items

    @property
    def charged(self) -> float:
        """What is charged to the budget so far, in the decisions' clock's units: under a time budget the runs'
        measured seconds of work; where the budget is counted, what the clock says their items and validations
        cost (so that two tunes of a task plan alike, whatever the machine's load)."""
        if not self.counted or self.decided.clock is None:
            return self.spent.work
        return self.clock.seconds(self.spent.items, self.spent.validations)

    @property
    def left_items(self) -> float:
        return self.budget_items - self.spent.items

    def purse(self) -> Purse:
        """What the rest of the work may plan on: what is left of the budget in seconds of work (less a margin for
        what plans round) and in items."""
        return Purse(MARGIN * self.budget_seconds - self.charged, self.left_items, self.clock)

    @property
    def spent_runs(self) -> float:
        """What is spent, in runs: the runs' measured seconds over one run's (or items, where more), or items before
        the clock ran."""
        if self.decided.clock is None:
            return self.spent.items / self.ctx.run_items
        return max(self.charged / self.clock.run_seconds, self.spent.items / self.ctx.run_items)

    def say(self, message: str) -> None:
        if self.ctx.progress is not None:
            self.ctx.progress(message, self.spent_runs)
