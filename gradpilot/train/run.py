"""gradpilot's one engine: ``LocalRun`` trains in this process — for ``fit`` (the driver over it), tune's short
runs, its trunk and branches, and the probe. It takes the one optimizer step (``accumulation.optimizer_step``),
moves the LR with a torch scheduler (gradpilot's own schedules are a ``LambdaLR`` over the one LR function,
``schedules.factor``), reads its micro-batches in the one data order (``data``), and saves in the one checkpoint
format (``checkpoint``). ``start`` makes a run of a task by the task's own runner (its trainer's) where it
brings one, else by ``local_run``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gradpilot.errors import GradpilotError
from gradpilot.schedules.builders import Schedule, following
from gradpilot.schedules.factor import DecayType, Wsd
from gradpilot.train import checkpoint, precision
from gradpilot.train.accumulation import NumItems, StepParts, optimizer_step, windows
from gradpilot.train.batches import LossFn, StepFn
from gradpilot.train.data import Batches, Shuffled
from gradpilot.train.distributed import comm_device
from gradpilot.train.evaluation import Metric, evaluate_both
from gradpilot.train.seam import Branch, Ledger, Run, RunRecord, Score, Setting, steps_for
from gradpilot.train.state import load_keeping_lrs, load_weights, preserved, trainable_state
from gradpilot.train.task import Runner, Task

__all__ = ["LocalRun", "Validation", "local_run", "start", "steps_for"]


@dataclass(frozen=True)
class Validation:
    """How a run is validated: batches made afresh for each pass, its loss and metric (None: the loss scores)."""

    loader: Callable[[], Iterable[Any]]
    loss_fn: LossFn | None
    metric: Metric | None = None
    step_fn: StepFn | None = None
    num_items: NumItems | None = None


class LocalRun(Ledger):
    """A run trained in this process: ``parts`` make its steps, ``data`` gives its micro-batches epoch by epoch
    (``setting.accumulation`` of them a step), ``schedule`` moves the LR, ``validation`` scores it.

    ``advance`` trains to a step; ``branch`` decays the LR from here (``Wsd.decayed_from``) on the very data the
    run would train on next, validates, and — unless kept — puts the run back exactly as it was; ``save`` and
    ``load`` a checkpoint folder that continues bit for bit. ``on_step`` (the driver's) is called after every
    step. Training losses stay on the device until read (``losses``: one host sync, summed over the processes
    under data parallel)."""

    def __init__(self, parts: StepParts, data: Batches, *, setting: Setting, schedule: Schedule | None,
                 validation: Validation | None, model: nn.Module, higher_is_better: bool = False) -> None:
        super().__init__(setting, higher_is_better)
        self.parts, self.data, self.schedule, self.validation, self.model = parts, data, schedule, validation, model
        self.steps_per_epoch = max(1, math.ceil(data.per_epoch / setting.accumulation))
        self.on_step: Callable[[], None] | None = None
        self.last_loss = math.nan  # the validation loss at the last evaluation
        self._windows: Iterator[list[Any]] | None = None
        self._pending: list[torch.Tensor] = []  # training losses still on the device
        self._losses: list[float] = []  # those read already

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.parts.optimizer

    @property
    def epoch(self) -> int:
        """Epochs completed (a run at an epoch's last step has completed it)."""
        return self.steps // self.steps_per_epoch

    @property
    def losses(self) -> list[float]:
        """The training loss of every step the run took, read from the device here."""
        if self._pending:
            stacked = torch.stack([loss.double().reshape(()) for loss in self._pending])
            if self.parts.world_size > 1:  # each process's mean: their average is the global mean
                stacked = stacked.to(comm_device())
                dist.all_reduce(stacked)
                stacked = stacked / self.parts.world_size
            self._losses += stacked.tolist()
            self._pending = []
        return list(self._losses)

    @property
    def last_step_loss(self) -> torch.Tensor | float:
        """The last step's training loss, as it stands (a tensor on the device, until read)."""
        return self._pending[-1] if self._pending else self._losses[-1] if self._losses else math.nan

    def advance(self, to_step: int) -> None:
        """Train until ``to_step`` optimizer steps have been taken."""
        self.model.train()
        while self.steps < to_step:
            with self.spending("training", items=self._window_items()):
                lr = float(self.optimizer.param_groups[0]["lr"])
                loss = optimizer_step(self.parts, self._next_window())  # DDP: one all-reduce a window
                if self.schedule is not None and self.schedule.interval == "step":
                    self.schedule.step()
            self.lrs.append(lr)
            self._pending.append(loss)
            self.steps += 1
            if self.steps % self.steps_per_epoch == 0:
                self._end_epoch()
            if self.on_step is not None:
                self.on_step()

    def _next_window(self) -> list[Any]:
        if self._windows is None:
            epoch, done = divmod(self.steps, self.steps_per_epoch)
            self._windows = windows(self.data.epoch(epoch, done * self.setting.accumulation), self.setting.accumulation)
        window = next(self._windows, None)
        if window is None:
            raise GradpilotError(f"the training data gave fewer batches than its length says ({self.data.per_epoch} "
                                 "an epoch): give a loader whose len() is what it yields")
        return window

    def _end_epoch(self) -> None:
        """The epoch's batches are over: read its iterator to its end (a loader's sampler draws from its generator
        once more as it ends, as a plain ``for`` over it does), and open the next epoch at the next step."""
        if self._windows is not None:
            for _ in self._windows:
                raise GradpilotError(f"the training data gave more batches than its length says "
                                     f"({self.data.per_epoch} an epoch): give a loader whose len() is what it yields")
        self._windows = None

    def _window_items(self) -> int:
        k, first = self.setting.accumulation, (self.steps % self.steps_per_epoch) * self.setting.accumulation
        return self.data.items(first, min(k, self.data.per_epoch - first))

    def branch(self, decay: int, decay_type: DecayType = "linear", *, keep: bool = False,
               weights: bool = False) -> Branch:
        """Decay the LR from here over ``decay`` steps (the run's schedule held until now, then decayed) and
        validate. Unless ``keep``, the run is then put back exactly as it was (weights, optimizer, RNGs, its
        place in the data), though the branch's items and seconds count in its cost."""
        schedule = self.setting.schedule.decayed_from(self.steps, decay, decay_type)
        if keep:
            return self._branch(schedule, decay, weights, keep=True)
        with preserved(self.model, self.optimizer):
            return self._branch(schedule, decay, weights, keep=False)

    def _branch(self, schedule: Wsd, decay: int, weights: bool, *, keep: bool) -> Branch:
        start, trunk = self.steps, (self.schedule, self._windows, len(self.lrs), self.losses)
        self.schedule, self._windows = following(self.optimizer, schedule, start), None
        self.advance(start + decay)
        lrs, losses = tuple(self.lrs[trunk[2]:]), tuple(self.losses[len(trunk[3]):])
        made = Branch(start, decay, self.evaluate(), schedule, lrs, losses, self.weights() if weights else None)
        if keep:
            self.setting = dataclasses.replace(self.setting, schedule=schedule)
        else:  # the trunk goes on from before the branch
            self.steps, self.schedule, self._windows = start, trunk[0], trunk[1]
            del self.lrs[trunk[2]:]
            self._losses = trunk[3]
        return made

    def evaluate(self) -> Score:
        """The validation score as it stands; the loss of the same pass is kept in ``last_loss``."""
        if self.validation is None:
            raise GradpilotError("scoring a run needs validation data")
        v = self.validation
        with self.spending("validation", validations=1):
            loss, metric = evaluate_both(self.model, v.loader(), v.loss_fn, v.metric, step_fn=v.step_fn,
                                         num_items=v.num_items, device=self.parts.device)
        self.last_loss = loss
        return self.score(loss if metric is None else metric, loss)

    def weights(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.model)

    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        """The run as it stands in the folder ``path`` (gradpilot's checkpoint format: weights, optimizer,
        scheduler, RNGs, its place in the data, its record, and ``extra`` for the driver)."""
        state = {"record": self.record(self.losses).to_json(), "model": trainable_state(self.model),
                 "optimizer": self.optimizer.state_dict(),
                 "scheduler": None if self.schedule is None else self.schedule.scheduler.state_dict(),
                 "rng": checkpoint.rng_state(), "data": self.data.state(), "extra": extra or {}}
        with self.spending("io"):
            checkpoint.save(state, path)

    def load(self, path: Path) -> None:
        """Continue the run saved in the folder ``path``."""
        with self.spending("io"):
            state = checkpoint.load(path)
            if state is None:
                raise GradpilotError(f"{path} holds no {checkpoint.NAME}: delete it to run this again")
            self.resume(state)

    def resume(self, state: dict[str, Any]) -> None:
        """Put back a checkpoint already read (``checkpoint.load``): a checkpoint of another run is one line."""
        try:
            load_weights(self.model, state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.schedule is not None and state["scheduler"] is not None:
                self.schedule.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise GradpilotError(f"the checkpoint does not fit this run ({exc}): start it afresh elsewhere") from None
        record = RunRecord.from_json(state["record"])
        self.restore(record)
        self._losses, self._pending, self._windows = [float(v) for v in record.losses if v is not None], [], None
        checkpoint.set_rng_state(state["rng"])
        self.data.restore(state["data"])


def local_run(task: Task, setting: Setting, *, seed: int, weights: dict[str, torch.Tensor],
              optimizer_state: dict[str, Any] | None = None, folder: Path | None = None) -> LocalRun:
    """A run of ``task`` in this process from ``weights`` (and ``optimizer_state``, to go on from a checkpoint:
    a copy is loaded, each group keeping the setting's LR), its data in the seed's order; torch's RNG seeded by
    ``seed``, so that the same seed trains the same run wherever it is made."""
    del folder  # a local run keeps nothing on disk unless saved
    torch.manual_seed(seed)
    load_weights(task.model, weights)
    optimizer = task.make_optimizer(setting.lr)
    if optimizer_state is not None:
        load_keeping_lrs(optimizer, copy.deepcopy(optimizer_state))
    for group in optimizer.param_groups:  # the setting's LRs are what the schedule multiplies
        group["initial_lr"] = group["lr"]
    parts = StepParts.assemble(task.model, optimizer, loss_fn=task.loss_fn, step_fn=task.step_fn,
                               max_grad_norm=task.max_grad_norm,
                               precision=precision.check(task.precision, "Task.precision"))
    dataset, collate = task.dataset()
    validation = Validation(_val_loader(task), task.loss_fn, task.metric, task.step_fn)
    return LocalRun(parts, Shuffled(dataset, collate, setting.micro_batch, seed), setting=setting,
                    schedule=following(optimizer, setting.schedule), validation=validation, model=task.model,
                    higher_is_better=task.higher_is_better)


def _val_loader(task: Task) -> Callable[[], Iterable[Any]]:
    def loader() -> Iterable[Any]:
        made = task.val_loader()
        if made is None:
            raise GradpilotError("scoring a run needs the task's validation data: give the task val_data")
        return made

    return loader


def start(task: Task, setting: Setting, *, seed: int, weights: dict[str, torch.Tensor],
          optimizer_state: dict[str, Any] | None = None, folder: Path | None = None) -> Run:
    """A run of ``task`` by the task's own runner (its trainer's) where it has one, else ``local_run``.
    ``folder`` is where a trainer may keep its own files for this run."""
    make: Runner = task.runner if task.runner is not None else local_run
    return make(task, setting, seed=seed, weights=weights, optimizer_state=optimizer_state, folder=folder)
