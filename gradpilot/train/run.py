"""The seam every run gradpilot makes for you goes through — tune's short runs, its trunk and the branches it
decays, the probe's branches, a Ray trial. A ``Run`` trains from given weights (and optimizer state) at a
``Setting``, goes on to a step, branches off a cooldown that is validated and (unless kept) thrown away, saves
and resumes, and says what it cost in items and seconds. A ``Runner`` makes runs: ``LocalRun`` trains in this
process with gradpilot's one optimizer step (``accumulation.optimizer_step``) and its one LR function
(``lr_factor``); a task made from a Hugging Face or Lightning trainer brings a runner that drives that trainer.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch.utils.data import DataLoader

from gradpilot._direction import worst
from gradpilot.schedules.factor import DecayType, Wsd
from gradpilot.train import checkpoint as _checkpoint
from gradpilot.train import precision
from gradpilot.train.accumulation import item_counter, optimizer_step
from gradpilot.train.batches import model_device
from gradpilot.train.evaluation import evaluate_both
from gradpilot.train.state import model_state, preserved

if TYPE_CHECKING:
    from gradpilot.train.task import Task


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


@dataclass
class Cost:
    """What a run has cost: items trained (its branches included) and seconds, by what they went on."""

    samples: int = 0
    training: float = 0.0
    evaluation: float = 0.0
    io: float = 0.0
    evals: int = 0  # validation passes

    @property
    def seconds(self) -> float:
        return self.training + self.evaluation + self.io

    def since(self, before: Cost) -> Cost:
        """What was spent after ``before`` (a copy taken earlier)."""
        return Cost(self.samples - before.samples, self.training - before.training,
                    self.evaluation - before.evaluation, self.io - before.io, self.evals - before.evals)

    def copy(self) -> Cost:
        return Cost(self.samples, self.training, self.evaluation, self.io, self.evals)


@dataclass(frozen=True)
class Score:
    """A validation pass: the task's metric (its loss where it has none; NaN where it is NaN, which never wins
    a comparison; an infinite loss is the worst there is) and the validation loss."""

    value: float
    loss: float


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
    losses: tuple[float, ...] = ()  # the training loss of each decay step
    weights: dict[str, torch.Tensor] | None = None

    @property
    def steps(self) -> int:
        return self.start + self.decay


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

    def save(self, path: Path) -> None: ...

    def load(self, path: Path) -> None: ...

    def weights(self) -> dict[str, torch.Tensor]: ...


class Runner(Protocol):
    """What makes runs of a task: its own trainer's, or gradpilot's (``LocalRun``)."""

    def __call__(self, task: Task, setting: Setting, *, seed: int, weights: dict[str, torch.Tensor],
                 optimizer_state: dict[str, Any] | None = None, folder: Path | None = None) -> Run: ...


def start(task: Task, setting: Setting, *, seed: int, weights: dict[str, torch.Tensor],
          optimizer_state: dict[str, Any] | None = None, folder: Path | None = None) -> Run:
    """A run of ``task`` by the task's own runner (its trainer's) where it has one, else ``LocalRun``.
    ``folder`` is where a trainer may keep its own files for this run."""
    make: Runner = task.runner if task.runner is not None else LocalRun
    return make(task, setting, seed=seed, weights=weights, optimizer_state=optimizer_state, folder=folder)


def steps_for(samples: int, batch: int) -> int:
    """Optimizer steps to see ``samples`` items at ``batch`` (a started step counts whole)."""
    return max(0, math.ceil(samples / batch))


class LocalRun:
    """A run trained in this process on the task's model, from ``weights`` (and ``optimizer_state``, to go on
    from a checkpoint); ``seed`` fixes the order of its data."""

    def __init__(self, task: Task, setting: Setting, *, seed: int, weights: dict[str, torch.Tensor],
                 optimizer_state: dict[str, Any] | None = None, folder: Path | None = None) -> None:
        del folder  # a local run keeps nothing on disk unless saved
        self.task, self.setting, self.seed = task, setting, seed
        task.model.load_state_dict(weights)
        self.optimizer = task.make_optimizer(setting.lr)
        self.peaks = [float(g["lr"]) for g in self.optimizer.param_groups]  # each group's LR at this setting
        if optimizer_state is not None:  # a copy: torch's loading keeps the given tensors, and steps update them
            self.optimizer.load_state_dict(copy.deepcopy(optimizer_state))
        self.device = model_device(task.model)
        self.count = item_counter(task.loss_fn, None)
        self.precision = precision.check(task.precision, "Task.precision")
        self.scaler = precision.scaler_for(self.device, self.precision)
        self.batches = _stream(task, setting.micro_batch, seed, 0)
        self.steps = 0
        self.cost = Cost()
        self.lrs: list[float] = []
        self._losses: list[torch.Tensor] = []  # on the device until read: no host sync per step
        self.last_loss = math.nan  # the validation loss at the last evaluation

    @property
    def losses(self) -> list[float]:
        """The training loss of every step the run took (read from the device once, here)."""
        return torch.stack(self._losses).double().tolist() if self._losses else []

    @property
    def samples(self) -> int:
        return self.steps * self.setting.batch

    def advance(self, to_step: int) -> None:
        """Train on the setting's schedule until ``to_step`` optimizer steps have been taken."""
        begin = time.perf_counter()
        while self.steps < to_step:
            lr, loss = self._step(self.setting.schedule.factor(self.steps), self.batches)
            self.lrs.append(lr)
            self._losses.append(loss)
            self.steps += 1
        self.cost.training += time.perf_counter() - begin

    def branch(self, decay: int, decay_type: DecayType = "linear", *, keep: bool = False,
               weights: bool = False) -> Branch:
        """Decay the LR from here over ``decay`` steps (``Wsd.decayed_from``: the trunk's schedule, held until now,
        then decayed), on data of the branch's own, and validate. Unless ``keep``, the run is then put back
        exactly as it was (weights, optimizer, RNG), though the branch's items and seconds count in its cost."""
        schedule = self.setting.schedule.decayed_from(self.steps, decay, decay_type)
        stream = _stream(self.task, self.setting.micro_batch, self.seed + 7919 * (1 + self.steps), 0)
        if keep:
            return self._branch(schedule, decay, stream, weights)
        with preserved(self.task.model, self.optimizer):
            return self._branch(schedule, decay, stream, weights)

    def _branch(self, schedule: Wsd, decay: int, stream: Iterator[Any], weights: bool) -> Branch:
        begin = time.perf_counter()
        taken = [self._step(schedule.factor(self.steps + i), stream) for i in range(decay)]
        losses = tuple(torch.stack([loss for _, loss in taken]).double().tolist()) if taken else ()
        self.cost.training += time.perf_counter() - begin
        score = self.evaluate()
        return Branch(self.steps, decay, score, schedule, tuple(lr for lr, _ in taken), losses,
                      self.weights() if weights else None)

    def evaluate(self) -> Score:
        """The task's validation score as it stands; the loss of the same pass is kept in ``last_loss``."""
        task, begin = self.task, time.perf_counter()
        loader = task.val_loader()
        if loader is None:
            raise ValueError("scoring a run needs the task's validation data")
        loss, metric = evaluate_both(task.model, loader, task.loss_fn, task.metric, step_fn=task.step_fn,
                                     device=self.device)
        self.cost.evaluation += time.perf_counter() - begin
        self.cost.evals += 1
        self.last_loss = loss
        value = loss if metric is None else metric
        return Score(worst(task.higher_is_better) if math.isinf(value) else value, loss)

    def weights(self) -> dict[str, torch.Tensor]:
        return model_state(self.task.model)

    def save(self, path: Path) -> None:
        """The run as it stands (weights, optimizer, counters, the LRs it took), in gradpilot's checkpoint format."""
        begin = time.perf_counter()
        state = {"model": self.task.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "counters": torch.tensor([self.steps, self.cost.samples, self.cost.evals]),
                 "lrs": torch.tensor(self.lrs, dtype=torch.float64),
                 "losses": torch.tensor(self.losses, dtype=torch.float64)}
        _checkpoint.save_file(path, state)
        self.cost.io += time.perf_counter() - begin

    def load(self, path: Path) -> None:
        """Continue a saved run: its weights, optimizer, counters, LRs and its place in the data."""
        begin = time.perf_counter()
        state = _checkpoint.load_file(path, "delete it to run this again")
        self.task.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps, self.cost.samples, self.cost.evals = (int(x) for x in state["counters"])
        self.lrs = [float(x) for x in state["lrs"]]
        self._losses = list(state["losses"].to(self.device))
        self.batches = _stream(self.task, self.setting.micro_batch, self.seed,
                               self.steps * self.setting.accumulation)
        self.cost.io += time.perf_counter() - begin

    def _step(self, factor: float, batches: Iterator[Any]) -> tuple[float, torch.Tensor]:
        """One optimizer step at the setting's LR × ``factor``: the first param group's LR it took, and its loss
        (left on the device)."""
        for group, peak in zip(self.optimizer.param_groups, self.peaks, strict=True):
            group["lr"] = peak * factor
        self.task.model.train()
        window = [next(batches) for _ in range(self.setting.accumulation)]
        loss = optimizer_step(self.task.model, self.optimizer, window, self.task.loss_fn, self.task.step_fn,
                              self.device, self.count, max_grad_norm=self.task.max_grad_norm,
                              precision=self.precision, scaler=self.scaler)
        self.cost.samples += self.setting.batch
        return self.peaks[0] * factor, loss.detach()


def _stream(task: Task, micro_batch: int, seed: int, skip: int) -> Iterator[Any]:
    """Full micro-batches of the task's training set, reshuffled every epoch (epoch ``e`` by ``seed`` and ``e``),
    for ever; the first ``skip`` micro-batches are passed over without reading them (a resumed run)."""
    dataset, collate = task.dataset()
    n = len(dataset)  # type: ignore[arg-type]
    per_epoch = n // micro_batch if n >= micro_batch else 1
    epoch, offset = divmod(skip, per_epoch)
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        batches = [order[i * micro_batch:(i + 1) * micro_batch] for i in range(offset, per_epoch)]
        yield from DataLoader(dataset, batch_sampler=batches, collate_fn=collate)
        epoch, offset = epoch + 1, 0
