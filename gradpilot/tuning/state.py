"""What tune's stages decide, typed: each stage returns a ``Stage`` whose ``decision`` is one frozen dataclass
below, and the next stage reads that dataclass's fields from ``Decided`` — no dict of string keys shared by
stages. Records travel through the Optuna storage and ``tune.json`` as JSON (``Stage.to_json``) and come back
typed (``Stage.from_json``)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from gradpilot._files import json_safe
from gradpilot.scaling import LRRule
from gradpilot.schedules.factor import Wsd
from gradpilot.train.seam import Cost


@dataclass(frozen=True)
class Clock:
    """What one run of the task costs, measured through the runner that trains it: training seconds per item at
    the task's batch, seconds per validation pass, seconds each call into the runner costs beyond its steps (a
    trainer built, resumed and checkpointed: 0 in gradpilot's own loop), and how many passes a run makes (one
    per epoch)."""

    item_seconds: float
    eval_seconds: float
    run_items: int
    evals: int
    start_metric: float  # the validation metric of the initial weights (the pass that was timed)
    call_seconds: float = 0.0

    @property
    def run_seconds(self) -> float:
        return self.seconds(self.run_items, self.evals, 1)

    def seconds(self, items: float, evals: float = 0.0, calls: float = 0.0) -> float:
        """The seconds ``items`` of training, ``evals`` validation passes and ``calls`` runner calls take."""
        return items * self.item_seconds + evals * self.eval_seconds + calls * self.call_seconds


@dataclass(frozen=True)
class RangeTest:
    """The range test's reading: its suggestion, the interval of LRs its curve supports, its confidence."""

    lr_found: float
    lr_low: float
    lr_edge: float
    lr_confidence: float


@dataclass(frozen=True)
class Batches:
    """The batches worth trying (the task's first), the largest micro-batch that fits, the LR rule between them."""

    batches: tuple[int, ...]
    max_micro: int
    rule: LRRule


@dataclass(frozen=True)
class Splits:
    """Each batch to try as (micro-batch, accumulation steps), in the order of ``Batches.batches``."""

    splits: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Chosen:
    """The search's winner: its LR, micro-batch and accumulation, its warmup (optimizer steps), the search
    trial whose run the trunk goes on from (None: no search ran, or the trunk cannot go on from it), and the
    epochs where the trunk branches (planned with the search, against the same budget)."""

    learning_rate: float
    micro_batch: int
    accumulation: int
    warmup_steps: int
    trial: int | None = None
    branches: tuple[int, ...] = ()

    @property
    def batch(self) -> int:
        return self.micro_batch * self.accumulation


@dataclass(frozen=True)
class Trained:
    """The run behind ``model.pt``: its epochs, the schedule it trained on (``Wsd``: warmup, stable, decay, or
    a fixed schedule by its transformers name with ``schedule_kwargs``), its validation score and where its
    weights are."""

    num_train_epochs: int
    schedule: Wsd
    metric: float
    model_file: str
    trained_by: str = ""
    scheduler: str = ""  # a transformers schedule name where the schedule is not a Wsd (a fixed linear or cosine)
    schedule_kwargs: dict[str, Any] = field(default_factory=dict)

    def training_arguments(self) -> dict[str, Any]:
        """The schedule in ``TrainingArguments`` names."""
        if self.scheduler:
            return {"lr_scheduler_type": self.scheduler, "lr_scheduler_kwargs": dict(self.schedule_kwargs),
                    "warmup_steps": self.schedule.warmup}
        return self.schedule.training_arguments()


Decision = Clock | RangeTest | Batches | Splits | Chosen | Trained
_KINDS: dict[str, type[Any]] = {k.__name__: k for k in (Clock, RangeTest, Batches, Splits, Chosen, Trained)}


@dataclass(frozen=True)
class Stage:
    """One stage's outcome: its typed decision (None where it did not run and decided nothing), why (one line),
    what it weighed, its numbers, what it cost, and, when it did not run, why not (a fixed value, the budget)."""

    name: str
    decision: Decision | None
    why: str
    alternatives: list[Any] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    spent: Cost = field(default_factory=Cost)
    skipped: str = ""

    @property
    def items(self) -> int:
        return self.spent.items

    @property
    def seconds(self) -> float:
        return self.spent.seconds

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = json_safe({
            "name": self.name, "kind": type(self.decision).__name__ if self.decision is not None else None,
            "decision": _plain(self.decision), "why": self.why, "alternatives": self.alternatives,
            "evidence": self.evidence, "items": self.spent.items, "seconds": round(self.spent.seconds, 3),
            "spent": self.spent.to_json(),
            "skipped": self.skipped})
        return out

    @staticmethod
    def from_json(saved: dict[str, Any]) -> Stage:
        kind, plain = saved.get("kind"), saved.get("decision")
        decision = _typed(_KINDS[kind], plain) if kind is not None and plain is not None else None
        return Stage(saved["name"], decision, saved["why"], list(saved.get("alternatives", [])),
                     dict(saved.get("evidence", {})), Cost.from_json(saved.get("spent", {})), saved.get("skipped", ""))


def _plain(decision: Decision | None) -> dict[str, Any] | None:
    return None if decision is None else dataclasses.asdict(decision)


def _typed(kind: type[Any], plain: dict[str, Any]) -> Any:
    """A decision from its JSON: tuples where the dataclass holds tuples, a Wsd where it holds a schedule, NaN
    where a float was not finite (JSON has no NaN: it was written as null)."""
    floats = {f.name for f in dataclasses.fields(kind) if f.type == "float"}
    values: dict[str, Any] = {k: math.nan if v is None and k in floats else v for k, v in plain.items()}
    if "schedule" in values and isinstance(values["schedule"], dict):
        values["schedule"] = Wsd(**values["schedule"])
    for name in ("batches", "splits", "branches"):
        if name in values:
            values[name] = tuple(tuple(v) if isinstance(v, list) else v for v in values[name])
    return kind(**values)


@dataclass
class Decided:
    """What the stages have decided so far, each field set by one stage (None until it has run)."""

    clock: Clock | None = None
    lr_range: RangeTest | None = None
    batch: Batches | None = None
    accumulation: Splits | None = None
    lr_search: Chosen | None = None
    epochs: Trained | None = None
    schedule: Trained | None = None

    def take(self, stage: Stage) -> None:
        """Set the field of ``stage``'s name to its decision."""
        setattr(self, stage.name, stage.decision)

    def need(self, name: str) -> Any:
        """The decision of an earlier stage, which must have run (a stage order mistake otherwise)."""
        value = getattr(self, name)
        if value is None:
            raise AssertionError(f"stage {name!r} has not decided yet")
        return value
