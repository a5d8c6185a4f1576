"""What tune's stages decide and what they saw, typed: each stage returns a ``Stage`` whose ``decision`` is one
frozen dataclass below and whose ``evidence`` is another; the next stage reads the decisions' fields from
``Decided``, and the report reads the evidence's — no dict of string keys shared by stages or by the page.
Records travel through the Optuna storage and ``tune.json`` as JSON (``Stage.to_json``) and come back typed
(``Stage.from_json``). No torch: the report reads them in a light process."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gradpilot._files import write_json
from gradpilot._records import from_tagged, plain, tagged, typed
from gradpilot.batch.results import BatchTrial
from gradpilot.errors import GradpilotError
from gradpilot.scaling import LRRule
from gradpilot.schedules.factor import Wsd
from gradpilot.train.seam import Cost

if TYPE_CHECKING:
    from pathlib import Path

    from gradpilot.tuning.folder import TuneFolder

# --- decisions ---


@dataclass(frozen=True)
class Clock:
    """What one run of the task costs, measured through the runner that trains it: training seconds per item at
    the task's batch, seconds per validation pass, seconds each call into the runner costs beyond its steps (a
    trainer built, resumed and checkpointed: 0 in gradpilot's own engine), and how many passes a run makes (one
    per epoch, or as the user's trainer validates) and how many checkpoints it saves, at ``save_seconds`` each."""

    item_seconds: float
    validation_seconds: float
    run_items: int
    validations: int
    start_metric: float  # the validation metric of the initial weights (the pass that was timed)
    call_seconds: float = 0.0
    saves: int = 0
    save_seconds: float = 0.0
    start_loss: float = math.nan  # the validation loss of the initial weights

    @property
    def run_seconds(self) -> float:
        return self.seconds(self.run_items, self.validations, 1) + self.saves * self.save_seconds

    def seconds(self, items: float, validations: float = 0.0, calls: float = 0.0) -> float:
        """The seconds ``items`` of training, ``validations`` passes and ``calls`` runner calls take."""
        return items * self.item_seconds + validations * self.validation_seconds + calls * self.call_seconds


@dataclass(frozen=True)
class RangeTest:
    """The range test's reading: its suggestion, the interval of LRs its curve supports, its confidence."""

    suggestion: float
    low: float
    high: float
    confidence: float


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
    a fixed schedule by its transformers name with ``schedule_kwargs``), its validation score and who trained it
    (the worker whose folder holds its weights)."""

    num_train_epochs: int
    schedule: Wsd
    metric: float
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
DECISIONS = (Clock, RangeTest, Batches, Splits, Chosen, Trained)

# --- evidence: what each stage saw, for the record and the report ---


@dataclass(frozen=True)
class ClockSeen:
    run_seconds: float
    budget_seconds: float
    budget_runs: float


@dataclass(frozen=True)
class CurveSeen:
    """The range test's curve, its stop, and every rule's pick."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed_losses: tuple[float, ...]
    confidence: float
    stop: str
    picks: dict[str, float]


@dataclass(frozen=True)
class BatchSeen:
    """The gradient noise scale (None where it could not be measured, and why), the memory search's trials and
    what bounded it."""

    noise_scale: float | None = None
    noise_error: str = ""
    max_micro: int = 0
    memory_limit: str = ""
    trials: tuple[BatchTrial, ...] = ()


@dataclass(frozen=True)
class SplitsSeen:
    notes: tuple[str, ...]


@dataclass(frozen=True)
class TrialRecord:
    """One candidate of the LR search: its setting, its fate, its score at each rung (items, as text), what it
    trained and its seconds."""

    trial: int
    lr: float
    batch: int
    state: str
    scores: dict[str, float]
    items: int
    seconds: float
    stopped: str = ""


@dataclass(frozen=True)
class Overtrained:
    """The evidence: the finalist that validated best at the rung before the last (its LR and score there), the
    items its run had trained when so scored (its cooldown included), and every finalist's two scores."""

    lr: float
    score: float
    best_items: int
    finalists: tuple[tuple[float, float, float], ...]  # (lr, score at the rung before, score at the last)


@dataclass(frozen=True)
class SearchSeen:
    rungs: tuple[int, ...]
    cooldown: float
    score: float
    peak_disk_bytes: int
    run_seconds: float
    trials: tuple[TrialRecord, ...]
    overtrained: Overtrained | None = None  # where the finalists overfit: the trunk started afresh, its LR lowered


@dataclass(frozen=True)
class BranchRecord:
    """A cooldown branch of the trunk: where it ends (epochs, steps), where it started and how long it decayed,
    its score and validation loss, the whole schedule its weights trained on, and whether it was the best so far."""

    epochs: int
    start: int
    decay: int
    steps: int
    score: float
    loss: float
    schedule: Wsd
    best: bool = False


@dataclass(frozen=True)
class TrunkSeen:
    """The branches and which won; the LR the model trained at step by step; the trunk's own LRs (none for a
    fixed schedule trained as one run) and the step it went on from the search at."""

    branches: tuple[BranchRecord, ...]
    winner: int
    lrs: tuple[float, ...]
    max_epochs: int
    trunk_lrs: tuple[float, ...] | None = None
    from_step: int = 0
    peak_disk_bytes: int = 0


Evidence = ClockSeen | CurveSeen | BatchSeen | SplitsSeen | SearchSeen | TrunkSeen
EVIDENCE = (ClockSeen, CurveSeen, BatchSeen, SplitsSeen, SearchSeen, TrunkSeen)


@dataclass(frozen=True)
class Stage:
    """One stage's outcome: its typed decision (None where it did not run and decided nothing), why (one line),
    what it saw (typed evidence), what it cost, and, when it did not run, why not (a fixed value, the budget)."""

    name: str
    decision: Decision | None
    why: str
    evidence: Evidence | None = None
    spent: Cost = field(default_factory=Cost)
    skipped: str = ""

    @property
    def items(self) -> int:
        return self.spent.items

    @property
    def seconds(self) -> float:
        return self.spent.seconds

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "decision": tagged(self.decision), "why": self.why,
                "evidence": tagged(self.evidence), "spent": self.spent.to_json(), "items": self.spent.items,
                "seconds": round(self.spent.seconds, 3), "skipped": self.skipped}

    @staticmethod
    def from_json(saved: dict[str, Any]) -> Stage:
        return Stage(saved["name"], from_tagged(DECISIONS, saved.get("decision")), saved["why"],
                     from_tagged(EVIDENCE, saved.get("evidence")), Cost.from_json(saved.get("spent", {})),
                     saved.get("skipped", ""))


@dataclass(frozen=True)
class Decided:
    """What the stages have decided so far, each field set by one stage (None until it has run)."""

    clock: Clock | None = None
    lr_range: RangeTest | None = None
    batch: Batches | None = None
    accumulation: Splits | None = None
    lr_search: Chosen | None = None
    epochs: Trained | None = None
    schedule: Trained | None = None

    def taking(self, stage: Stage) -> Decided:
        """These decisions and ``stage``'s, under its name."""
        changed: dict[str, Any] = {stage.name: stage.decision}
        return dataclasses.replace(self, **changed)

    def need(self, name: str) -> Any:
        """The decision of an earlier stage, which must have run (a stage order mistake otherwise)."""
        value = getattr(self, name)
        if value is None:
            raise AssertionError(f"stage {name!r} has not decided yet")
        return value


@dataclass(frozen=True)
class Assumed:
    """What a plan's schedule was written for: the run's items, the processes they were shared over, the steps of
    an epoch and of the whole run. On a run of another length the schedule keeps its shape — its decay is the last
    ``num_decay_steps`` — and ``gradpilot train`` refuses one it cannot hold."""

    train_items: int
    world_size: int
    steps_per_epoch: int
    epochs: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def words(self) -> str:
        return (f"written for {self.train_items:,} training items on {self.world_size} process"
                f"{'es' if self.world_size > 1 else ''}: {self.steps_per_epoch:,} steps an epoch, "
                f"{self.total_steps:,} in all")


@dataclass(frozen=True)
class TuneRecord:
    """``tune.json``: the settings the tune was started with, every stage done (typed: ``state.Stage``), what it
    spent against its budget, and — once finished — the plan, why each value, what its schedule assumed, and the
    validation metric of the model it trained. ``wall_seconds`` is the tune call's, ``process_seconds`` the whole
    command's (start-up and imports included): the cost paid, beside the budgeted spend."""

    settings: dict[str, Any]
    task_weights: str
    stages: tuple[Stage, ...] = ()
    spent: Cost = field(default_factory=Cost)
    spent_runs: float = 0.0
    spent_item_runs: float = 0.0
    budget_runs: float = math.nan
    budget_seconds: float = math.nan
    run_seconds: float = math.nan
    peak_disk_bytes: int = 0
    wall_seconds: float = math.nan  # from the tune call to its end, the report included
    process_seconds: float = math.nan  # the process's age at the end: a command's whole time, start-up included
    plan: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    assumed: Assumed | None = None
    metric: float = math.nan

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    @property
    def finished(self) -> bool:
        return bool(self.plan)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = plain({**{k: v for k, v in vars(self).items() if k != "stages"},
                                     "stages": {s.name: s.to_json() for s in self.stages}})
        out["seconds"] = {k: v for k, v in self.spent.to_json().items() if k in ("training", "validation", "io",
                                                                                 "other")}
        if self.assumed is not None:
            out["assumed"]["total_steps"] = self.assumed.total_steps
        return out

    @staticmethod
    def from_json(saved: dict[str, Any]) -> TuneRecord:
        stages = tuple(Stage.from_json(s) for s in (saved.get("stages") or {}).values())
        rest = {k: v for k, v in saved.items() if k not in ("stages", "seconds")}
        if isinstance(rest.get("assumed"), dict):
            rest["assumed"] = {k: v for k, v in rest["assumed"].items() if k != "total_steps"}
        record = typed(TuneRecord, {**rest, "settings": saved.get("settings") or {},
                                    "task_weights": saved.get("task_weights", "")})
        return TuneRecord(**{**vars(record), "stages": stages})

    @staticmethod
    def read(path: Path) -> TuneRecord:
        """The record at ``path``; a missing or damaged one is one line."""
        try:
            saved = json.loads(path.read_text())
            if not isinstance(saved, dict):
                raise ValueError("not a mapping")
            return TuneRecord.from_json(saved)
        except FileNotFoundError:
            raise GradpilotError(f"{path} does not exist: give the folder a `gradpilot tune` wrote") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GradpilotError(f"{path} cannot be read ({exc}): run `gradpilot tune` again") from None

    def write(self, folder: TuneFolder) -> None:
        write_json(folder.record, self.to_json())


__all__ = [
    "DECISIONS",
    "EVIDENCE",
    "Batches",
    "BranchRecord",
    "Chosen",
    "Clock",
    "ClockSeen",
    "CurveSeen",
    "Decided",
    "Decision",
    "Evidence",
    "Overtrained",
    "RangeTest",
    "SearchSeen",
    "Splits",
    "SplitsSeen",
    "Stage",
    "Trained",
    "TrialRecord",
    "TrunkSeen",
    "plain",
    "typed",
]
