"""``tune``'s last two stages: the trunk and the schedule.

**epochs** — the search's winner is continued, not restarted, at its constant LR (one trunk, warmup–stable–
decay). At a few points along it (about a third, two thirds and all of the task's epochs, as the budget
pays) a cooldown branch decays the LR over ``DECAY_SHARE`` of the steps so far and is validated; the trunk
goes on from before the branch. The best branch is the model, and early stopping is the choice among
branches: its length is ``num_train_epochs``. Hägele et al. (2024) show such a branch matches a cosine run
of the same length. The trunk saves itself before each branch it goes on from and notes each branch done
(``TrunkNote``, typed), so a killed tune redoes no branch.

**schedule** — the plan's schedule says exactly what the winning branch trained: ``warmup_stable_decay``
with its ``lr_scheduler_kwargs`` (or a constant LR, or a fixed schedule trained as fixed).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gradpilot._direction import better
from gradpilot._files import write_json
from gradpilot._records import plain, typed
from gradpilot.schedules.builders import cosine_with_min_lr
from gradpilot.schedules.factor import DecayType, Wsd
from gradpilot.train import checkpoint
from gradpilot.train import run as runner
from gradpilot.train.metrics_log import MetricsLog, metric_column
from gradpilot.train.seam import Branch, Cost, Run, Setting
from gradpilot.tuning import budget
from gradpilot.tuning.context import SoFar
from gradpilot.tuning.halving import disk_bytes, remove
from gradpilot.tuning.queue import worker_id
from gradpilot.tuning.state import BranchRecord, Chosen, Stage, Trained, TrunkSeen

DECAY_TYPE: DecayType = "linear"  # how a branch decays (transformers' decay_type)
MIN_LR_RATE = 0.01  # a fixed cosine_with_min_lr ends at 1% of the peak


@dataclass(frozen=True)
class BranchDone:
    """A branch as the trunk's note keeps it: its record, and the LR and training loss of each decay step."""

    record: BranchRecord
    lrs: tuple[float, ...]
    losses: tuple[float | None, ...]


@dataclass(frozen=True)
class Path_:
    """The winning branch's whole path: the trunk up to it, then its decay (what ``runs/final`` logs), and the
    trunk's own LRs."""

    lrs: tuple[float, ...]
    losses: tuple[float | None, ...]
    trunk_lrs: tuple[float, ...]


@dataclass(frozen=True)
class TrunkNote:
    """``runs/trunk.json``: the step the trunk went on from the search at, the branches done, and — once the last
    is done — the winning path."""

    from_step: int = 0
    branches: tuple[BranchDone, ...] = ()
    path: Path_ | None = None


def epochs(now: SoFar) -> Stage:
    """The trunk and its branches; the best branch's length is the epoch count."""
    chosen: Chosen = now.decided.need("lr_search")
    if now.ctx.fixed.fresh:
        return _fresh(now, chosen)
    trunk = Trunk(now, chosen)
    trunk.go()
    return trunk.stage()


class Trunk:
    """The trunk in progress: its run, its plan, and the branches done (read back after a kill)."""

    def __init__(self, now: SoFar, chosen: Chosen) -> None:
        self.now, self.chosen, ctx = now, chosen, now.ctx
        self.folder = ctx.folder
        share = 0.0 if ctx.fixed.constant else budget.DECAY_SHARE
        per_epoch = budget.steps_per_epoch(ctx.train_items, chosen.micro_batch, chosen.accumulation)
        setting = Setting(chosen.learning_rate, chosen.micro_batch, chosen.accumulation,
                          Wsd(warmup=chosen.warmup_steps))
        self.run: Run = runner.start(ctx.task, setting, seed=ctx.seed, weights=ctx.initial,
                                     folder=self.folder.trunk_scratch)
        self.peak_disk = disk_bytes(self.folder.runs)
        self.note = self._resume()
        self.before = self.run.cost  # a run loaded from a save brings what it cost before: not the trunk's
        self.plan = budget.TrunkPlan(chosen.branches, per_epoch, share).reachable(self.note.from_step)

    def _resume(self) -> TrunkNote:
        """Go on from the trunk's own save, else from the search winner's run; the branches already done."""
        if self.folder.trunk_note.exists():
            note = typed(TrunkNote, json.loads(self.folder.trunk_note.read_text()))
            if self.folder.trunk.exists() or note.path is not None:
                if note.path is None:
                    self.run.load(self.folder.trunk)
                return note
        if self.chosen.trial is not None and self._search_run().exists():  # else another machine's worker has it:
            self.run.load(self._search_run())  # the trunk starts from the initial weights here, and pays for it
            return TrunkNote(self.run.steps)
        return TrunkNote()

    def _search_run(self) -> Path:
        return self.folder.trial(self.chosen.trial if self.chosen.trial is not None else -1)

    def go(self) -> None:
        """Every branch not yet done, in order: the trunk advanced to its start, the branch taken and noted; at
        the end, the winning path noted and the trunk's saves deleted (nothing goes on from them)."""
        if self.note.path is not None:
            return
        last = len(self.plan.epochs) - 1
        for k in range(len(self.note.branches), last + 1):
            self.run.advance(self.plan.start(k))
            self.now.say(f"trunk at step {self.run.steps:,}: branch to {self.plan.epochs[k]} epochs")
            if k < last:
                self._save()
            self._done(k, self.run.branch(self.plan.decay(k), DECAY_TYPE, keep=k == last, weights=True))
        won = self.note.branches[_winner(self.note.branches, self.now.ctx.task.higher_is_better)]
        start = won.record.start
        path = Path_(tuple(self.run.lrs[:start]) + won.lrs, tuple(self.run.losses[:start]) + won.losses,
                     tuple(self.run.lrs))
        self._write(TrunkNote(self.note.from_step, self.note.branches, path))
        for done in (self.folder.trunk, self.folder.trunk_scratch):
            remove(done)
        if self.chosen.trial is not None:
            remove(self._search_run())

    def _save(self) -> None:
        """The trunk before a branch it will go on from: a kill during the branch redoes only the branch."""
        self.run.save(self.folder.trunk)
        self._write(self.note)
        if self.chosen.trial is not None:
            remove(self._search_run())  # the trunk's own save replaces it

    def _done(self, k: int, branch: Branch) -> None:
        """A branch done: its score, schedule and LRs noted; its weights kept where it is the best so far."""
        higher = self.now.ctx.task.higher_is_better
        wins = all(not better(b.record.score, branch.score.value, higher_is_better=higher) for b in self.note.branches)
        if wins and branch.weights is not None:
            self.run.cost += Cost(io=_save_weights(self.folder.best, branch.weights))
        record = BranchRecord(self.plan.epochs[k], branch.start, branch.decay, branch.steps, branch.score.value,
                              branch.score.loss, branch.schedule, wins)
        done = BranchDone(record, branch.lrs, branch.losses)
        self._write(TrunkNote(self.note.from_step, (*self.note.branches, done), self.note.path))

    def _write(self, note: TrunkNote) -> None:
        self.note = note
        write_json(self.folder.trunk_note, plain(note))
        self.peak_disk = max(self.peak_disk, disk_bytes(self.folder.runs))

    def stage(self) -> Stage:
        """The epochs stage: the branch that validated best, its length and its schedule."""
        done, path = self.note.branches, self.note.path
        assert path is not None
        winner = _winner(done, self.now.ctx.task.higher_is_better)
        chosen = done[winner].record
        _log(self.now, path.lrs, path.losses, chosen)
        trained = Trained(chosen.epochs, chosen.schedule, chosen.score, worker_id())
        seen = TrunkSeen(tuple(b.record for b in done), winner, _thin(path.lrs), self.now.ctx.task.epochs,
                         _thin(path.trunk_lrs), self.note.from_step, self.peak_disk)
        return Stage("epochs", trained, _why(done, winner, self.now.ctx.task.epochs), seen,
                     spent=self.run.cost - self.before)


def _log(now: SoFar, lrs: tuple[float, ...], losses: tuple[float | None, ...], chosen: BranchRecord) -> None:
    """``runs/final/metrics.csv``: the winning branch's path (the trunk up to it, then its decay), each step's LR
    and training loss and its one validation, in the layout ``fit`` writes (what ``gradpilot diagnose`` reads)."""
    task = now.ctx.task
    column = metric_column(getattr(task.metric, "__name__", None), task.higher_is_better) if task.metric else None
    log = MetricsLog(now.ctx.folder.final, column)
    log.write(losses, lrs, [len(losses)], [chosen.loss], [chosen.score] if column else [], rewrite=True)


def _winner(done: tuple[BranchDone, ...], higher: bool) -> int:
    """The branch that validated best; of equal ones, the longest (more training, the same score)."""
    win = 0
    for i, b in enumerate(done):
        if not better(done[win].record.score, b.record.score, higher_is_better=higher):
            win = i
    return win


def _why(done: tuple[BranchDone, ...], winner: int, task_epochs: int) -> str:
    b = done[winner].record
    scores = ", ".join(f"{d.record.epochs}: {d.record.score:.4g}" for d in done)
    fewer = "" if b.epochs == task_epochs else f" (the task had {task_epochs})"
    if len(done) == 1:
        return (f"the trunk trained {b.epochs} epochs{fewer}, its last {b.decay} steps decaying the LR; "
                f"it validates at {b.score:.4g}")
    return (f"of the branches decayed at {len(done)} points (epochs: score — {scores}), the one at {b.epochs} "
            f"epochs validated best{fewer}")


def _thin(values: tuple[float, ...], most: int = 20_000) -> tuple[float, ...]:
    """A long LR record, every n-th value (tune.json stays small; the test runs are far shorter)."""
    stride = max(1, math.ceil(len(values) / most))
    return values[::stride]


def _save_weights(path: Path, weights: dict[str, torch.Tensor]) -> float:
    """Save a branch's weights; the seconds it took (checkpoint I/O)."""
    begin = time.perf_counter()
    checkpoint.save_file(path, weights)
    return time.perf_counter() - begin


def _fresh(now: SoFar, chosen: Chosen) -> Stage:
    """A fixed schedule that decays from the start (linear, cosine_with_min_lr): one run from the initial weights
    at the chosen LR and batch over the epochs, the search's runs aside."""
    ctx = now.ctx
    name = str(ctx.fixed.scheduler)
    n = ctx.fixed.epochs or ctx.task.epochs
    total = budget.steps_per_epoch(ctx.train_items, chosen.micro_batch, chosen.accumulation) * n
    warm = min(chosen.warmup_steps, total - 1)
    cosine = name == "cosine_with_min_lr"
    schedule = cosine_with_min_lr(warm, total, MIN_LR_RATE) if cosine else Wsd(warm, 0, total - warm)
    now.say(f"{name} over {n} epochs")
    run = runner.start(ctx.task, Setting(chosen.learning_rate, chosen.micro_batch, chosen.accumulation, schedule),
                       seed=ctx.seed, weights=ctx.initial, folder=ctx.folder.trunk_scratch)
    run.advance(total)
    score = run.evaluate()
    run.cost += Cost(io=_save_weights(ctx.folder.best, run.weights()))
    kwargs = {"min_lr": MIN_LR_RATE * chosen.learning_rate} if cosine else {}
    trained = Trained(n, schedule, score.value, worker_id(), name, kwargs)
    branch = BranchRecord(n, warm, total - warm, total, score.value, score.loss, schedule, True)
    _log(now, tuple(run.lrs), tuple(run.losses), branch)
    seen = TrunkSeen((branch,), 0, _thin(tuple(run.lrs)), ctx.task.epochs)
    return Stage("epochs", trained, f"{name} is fixed: one run of {n} epochs under it validates at {score.value:.4g}",
                 seen, spent=run.cost, skipped="fixed")


def schedule(now: SoFar) -> Stage:
    """The plan's schedule: exactly what the run behind model.pt trained on, in transformers' names."""
    trained: Trained = now.decided.need("epochs")
    args = trained.training_arguments()
    name = args["lr_scheduler_type"]
    fixed = now.ctx.fixed.scheduler
    if trained.scheduler:
        why = f"{name} is fixed"
    elif name.startswith("constant"):
        why = "constant LR" + (" (fixed)" if fixed else "")
    else:
        s = trained.schedule
        why = (f"warmup–stable–decay, as the winning branch trained: {s.warmup} warmup steps, {s.stable} at the peak, "
               f"a {s.decay_type} decay over the last {s.decay} (a cooldown branch matches a cosine run of the same "
               "length)")
    return Stage("schedule", trained, why, skipped="fixed" if fixed else "")
