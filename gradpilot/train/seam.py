"""The seam every run gradpilot makes goes through — ``fit``, tune's short runs, its trunk and the branches it
decays, the probe's branches, a Ray trial — whatever trains it: gradpilot's engine (``run.LocalRun``) or the
user's own Hugging Face or Lightning trainer (``gradpilot.integrations``).

A ``Run`` trains from given weights at a ``Setting``, goes on to a step, branches off a cooldown that is validated
and (unless kept) thrown away, saves and resumes, and says what it cost. The bookkeeping every run keeps — its
steps, the LR and training loss of each, its ``Cost``, the ``RunRecord`` it saves and the ``Score`` of a
validation — is ``Ledger``'s, shared by the three, so a saved run reads the same whichever trained it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from gradpilot._direction import worst
from gradpilot._files import write_json
from gradpilot.errors import GradpilotError
from gradpilot.schedules.factor import DecayType, Wsd

if TYPE_CHECKING:
    import torch

RECORD = "run.json"  # what a saved run says of itself (``RunRecord``), beside what its trainer saved


@dataclass(frozen=True)
class Setting:
    """What a run trains at: an LR (the optimizer's first param group; the others keep their ratio to it) at a
    micro-batch and accumulation (their product: the batch), on a schedule (by default: constant after its
    warmup, which a branch later decays)."""

    lr: float
    micro_batch: int
    accumulation: int = 1
    schedule: Wsd = field(default_factory=Wsd)

    @property
    def batch(self) -> int:
        return self.micro_batch * self.accumulation


Spending = Literal["training", "validation", "io", "other"]


@dataclass(frozen=True)
class Cost:
    """What work cost: the items it trained on (an item is one training example), its validation passes, and
    its wall seconds by what they went on — training, validation, checkpoint I/O, and the rest (start-up,
    bookkeeping)."""

    items: int = 0
    training: float = 0.0
    validation: float = 0.0
    io: float = 0.0
    other: float = 0.0
    validations: int = 0

    @property
    def seconds(self) -> float:
        return self.training + self.validation + self.io + self.other

    @property
    def work(self) -> float:
        """The seconds the runs themselves took (training, validation, checkpoints), the rest aside."""
        return self.training + self.validation + self.io

    def __add__(self, other: Cost) -> Cost:
        return Cost(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Cost)))

    def __sub__(self, other: Cost) -> Cost:
        return Cost(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(Cost)))

    def to_json(self) -> dict[str, float | int]:
        return {f.name: round(v, 4) if isinstance(v := getattr(self, f.name), float) else v for f in fields(Cost)}

    @staticmethod
    def from_json(saved: dict[str, Any]) -> Cost:
        return Cost(**{f.name: saved[f.name] for f in fields(Cost) if f.name in saved})


@dataclass(frozen=True)
class Score:
    """A validation pass: the task's metric (its loss where it has none) and the validation loss. A NaN value
    never wins a comparison; an infinite one is the worst there is (``Score.of``). A model whose validation loss is
    NaN or infinite is broken, whatever its metric says (an accuracy of NaN logits still counts some right): its
    value is NaN."""

    value: float
    loss: float

    @staticmethod
    def of(value: float, loss: float, *, higher_is_better: bool, has_loss: bool = True) -> Score:
        if has_loss and not math.isfinite(loss):
            return Score(math.nan, loss)
        return Score(worst(higher_is_better) if math.isinf(value) else value, loss)

    @property
    def broken(self) -> bool:
        return math.isnan(self.value)


@dataclass(frozen=True)
class Branch:
    """A cooldown branch: from trunk step ``start``, the LR decayed over ``decay`` steps, then validated.
    ``schedule`` is the whole schedule its weights were trained on (warmup, the trunk's stable phase, this
    decay); ``lrs`` the first param group's LR at each of its decay steps; ``weights`` its final weights,
    where asked for."""

    start: int
    decay: int
    score: Score
    schedule: Wsd
    lrs: tuple[float, ...]
    losses: tuple[float | None, ...] = ()  # the training loss of each decay step (None: not logged)
    weights: dict[str, torch.Tensor] | None = None

    @property
    def steps(self) -> int:
        return self.start + self.decay


@dataclass(frozen=True)
class RunRecord:
    """What a saved run says of itself, whichever engine trained it: its optimizer steps, the items and
    validation passes it cost, and the first param group's LR and the training loss of each step (None where
    its trainer logged none)."""

    steps: int
    items: int
    validations: int
    lrs: tuple[float, ...]
    losses: tuple[float | None, ...]

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "items": self.items, "validations": self.validations, "lrs": list(self.lrs),
                "losses": list(self.losses)}

    @staticmethod
    def from_json(saved: dict[str, Any]) -> RunRecord:
        losses = tuple(None if v is None else float(v) for v in saved["losses"])
        return RunRecord(int(saved["steps"]), int(saved["items"]), int(saved["validations"]),
                         tuple(float(v) for v in saved["lrs"]), losses)

    def write(self, folder: Path) -> None:
        write_json(folder / RECORD, self.to_json())

    @staticmethod
    def read(folder: Path) -> RunRecord:
        import json

        try:
            return RunRecord.from_json(json.loads((folder / RECORD).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GradpilotError(f"{folder / RECORD} cannot be read ({exc}): delete {folder} to run it "
                                 "again") from None


class Ledger:
    """The bookkeeping every run keeps the same way: its setting, its steps, the LR each step took, what it cost
    (``spending``), the record it saves and restores, and the score of a validation."""

    def __init__(self, setting: Setting, higher_is_better: bool) -> None:
        self.setting, self.higher_is_better = setting, higher_is_better
        self.steps = 0
        self.cost = Cost()
        self.lrs: list[float] = []

    @contextmanager
    def spending(self, on: Spending, *, items: int = 0, validations: int = 0) -> Iterator[None]:
        """Count the block's wall seconds as spent ``on`` one kind of work, with the items and passes it does."""
        begin = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - begin
            self.cost = self.cost + Cost(items, validations=validations, **{on: seconds})

    def score(self, value: float, loss: float, *, has_loss: bool = True) -> Score:
        """The pass's score; ``has_loss`` False where the trainer reported no validation loss (``loss`` NaN)."""
        return Score.of(value, loss, higher_is_better=self.higher_is_better, has_loss=has_loss)

    def record(self, losses: Sequence[float | None]) -> RunRecord:
        return RunRecord(self.steps, self.cost.items, self.cost.validations, tuple(self.lrs), tuple(losses))

    def restore(self, record: RunRecord) -> None:
        """Where a saved run stood: its steps, LRs and what it had cost in items and passes (its seconds were
        paid before, by whoever trained it)."""
        self.steps, self.lrs = record.steps, list(record.lrs)
        self.cost = Cost(record.items, validations=record.validations)


class Run(Protocol):
    """One run, wherever it trains."""

    setting: Setting
    steps: int  # optimizer steps the run itself has taken (its branches not included)
    cost: Cost
    lrs: list[float]  # the first param group's LR at each of those steps

    @property
    def losses(self) -> Sequence[float | None]: ...  # the training loss of each of those steps (None: not logged)

    def advance(self, to_step: int) -> None: ...

    def branch(self, decay: int, decay_type: DecayType = "linear", *, keep: bool = False,
               weights: bool = False) -> Branch: ...

    def evaluate(self) -> Score: ...

    def save(self, path: Path) -> None: ...  # a folder: the record (``RECORD``) beside what the engine keeps

    def load(self, path: Path) -> None: ...

    def weights(self) -> dict[str, torch.Tensor]: ...


def steps_for(items: int, batch: int) -> int:
    """Optimizer steps to see ``items`` items at ``batch`` (a started step counts whole)."""
    return max(0, math.ceil(items / batch))
