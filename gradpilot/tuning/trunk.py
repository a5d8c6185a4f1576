"""``tune``'s last two stages: the trunk and the schedule.

**epochs** — the search's winner is continued, not restarted, at its constant LR (one trunk, warmup–stable–
decay). At a few points along it (about a third, two thirds and all of the task's epochs, as the budget
pays) a cooldown branch decays the LR over ``DECAY_SHARE`` of the steps so far and is validated; the trunk
goes on from before the branch. The best branch is the model, and early stopping is the choice among
branches: its length is ``num_train_epochs``. Hägele et al. (2024) show such a branch matches a cosine run
of the same length. The trunk saves itself before each branch it goes on from (``runs/trunk.pt``) and notes
each branch done (``runs/trunk.json``), so a killed tune redoes no branch.

**schedule** — the plan's schedule says exactly what the winning branch trained: ``warmup_stable_decay``
with its ``lr_scheduler_kwargs`` (or a constant LR, or a fixed schedule trained as fixed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

from gradpilot._direction import better
from gradpilot._files import write_json
from gradpilot.schedules.builders import cosine_with_min_lr
from gradpilot.schedules.factor import DecayType, Wsd
from gradpilot.train import checkpoint as _checkpoint
from gradpilot.train import run as runner
from gradpilot.train.metrics_log import MetricsLog, metric_column
from gradpilot.train.seam import Branch, Cost, Run, Setting
from gradpilot.tuning import budget
from gradpilot.tuning.context import Context
from gradpilot.tuning.halving import disk_bytes, remove
from gradpilot.tuning.queue import worker_id
from gradpilot.tuning.search import CONSTANT, FRESH
from gradpilot.tuning.state import Chosen, Stage, Trained

DECAY_TYPE: DecayType = "linear"  # how a branch decays (transformers' decay_type)
MIN_LR_RATE = 0.01  # a fixed cosine_with_min_lr ends at 1% of the peak
BEST = "best.pt"  # the best branch's weights so far: model.pt at the end


def epochs(ctx: Context) -> Stage:
    """The trunk and its branches; the best branch's length is the epoch count."""
    chosen: Chosen = ctx.decided.need("lr_search")
    if ctx.fixed.get("lr_scheduler_type") in FRESH:
        return _fresh(ctx, chosen)
    trunk = Trunk(ctx, chosen)
    trunk.go()
    return trunk.stage()


class Trunk:
    """The trunk in progress: its run, its plan, and the branches done (read back after a kill)."""

    def __init__(self, ctx: Context, chosen: Chosen) -> None:
        self.ctx, self.chosen = ctx, chosen
        self.runs = ctx.out / "runs"
        share = 0.0 if ctx.fixed.get("lr_scheduler_type") in CONSTANT else budget.DECAY_SHARE
        per_epoch = budget.steps_per_epoch(ctx.train_items, chosen.micro_batch, chosen.accumulation)
        setting = Setting(chosen.learning_rate, chosen.micro_batch, chosen.accumulation,
                          Wsd(warmup=chosen.warmup_steps))
        self.run: Run = runner.start(ctx.task, setting, seed=ctx.seed, weights=ctx.initial,
                                     folder=self.runs / "trunk-work")
        self.peak_disk = disk_bytes(self.runs)
        self.done: list[dict[str, Any]] = self._resume()
        self.before = self.run.cost  # a run loaded from a save brings what it cost before: not the trunk's
        self.plan = budget.TrunkPlan(chosen.branches, per_epoch, share).reachable(self._from)

    def _resume(self) -> list[dict[str, Any]]:
        """Go on from the trunk's own save, else from the search winner's run; the branches already done."""
        saved, notes = self.runs / "trunk", self.runs / "trunk.json"
        self._from, self.path = 0, {}
        if notes.exists():
            record = json.loads(notes.read_text())
            if saved.exists() or record.get("path"):
                self._from, self.path = int(record["from"]), record.get("path", {})
                if not self.path:
                    self.run.load(saved)
                return list(record["branches"])
        if self.chosen.trial is not None and self._search_run().exists():  # else another machine's worker has it:
            self.run.load(self._search_run())  # the trunk starts from the initial weights here, and pays for it
            self._from = self.run.steps
        return []

    def _search_run(self) -> Path:
        return self.runs / "search" / f"trial-{self.chosen.trial}"

    def go(self) -> None:
        """Every branch not yet done, in order: the trunk advanced to its start, the branch taken and noted; at
        the end, the winning path noted and the trunk's saves deleted (nothing goes on from them)."""
        if self.path:
            return
        last = len(self.plan.epochs) - 1
        for k in range(len(self.done), last + 1):
            self.run.advance(self.plan.start(k))
            self.ctx.say(f"trunk at step {self.run.steps:,}: branch to {self.plan.epochs[k]} epochs")
            if k < last:
                self._save()
            branch = self.run.branch(self.plan.decay(k), DECAY_TYPE, keep=k == last, weights=True)
            self._note(k, branch)
        chosen = self.done[_winner(self.done, self.ctx.task.higher_is_better)]
        start = int(chosen["start"])
        self.path = {"lrs": self.run.lrs[:start] + list(chosen["lrs"]),
                     "losses": list(self.run.losses[:start]) + list(chosen["losses"]), "trunk_lrs": self.run.lrs}
        self._write()
        for done in (self.runs / "trunk", self.runs / "trunk-work"):
            remove(done)
        if self.chosen.trial is not None:
            remove(self._search_run())

    def _save(self) -> None:
        """The trunk before a branch it will go on from: a kill during the branch redoes only the branch."""
        self.run.save(self.runs / "trunk")
        self._write()
        if self.chosen.trial is not None:
            remove(self._search_run())  # the trunk's own save replaces it

    def _note(self, k: int, branch: Branch) -> None:
        """A branch done: its score, schedule and LRs noted; its weights kept where it is the best so far."""
        higher = self.ctx.task.higher_is_better
        wins = all(not better(_score(b), branch.score.value, higher_is_better=higher) for b in self.done)
        if wins and branch.weights is not None:
            self.run.cost += Cost(io=_save_weights(self.runs / BEST, branch.weights))
        self.done.append({"epochs": self.plan.epochs[k], "start": branch.start, "decay": branch.decay,
                          "steps": branch.steps, "score": branch.score.value, "loss": branch.score.loss,
                          "schedule": _schedule(branch.schedule), "lrs": list(branch.lrs),
                          "losses": list(branch.losses), "best": wins})
        self._write()

    def _write(self) -> None:
        write_json(self.runs / "trunk.json", {"from": self._from, "branches": self.done, "path": self.path})
        self.peak_disk = max(self.peak_disk, disk_bytes(self.runs))

    def stage(self) -> Stage:
        """The epochs stage: the branch that validated best, its length and its schedule."""
        winner = _winner(self.done, self.ctx.task.higher_is_better)
        chosen = self.done[winner]
        epochs = int(chosen["epochs"])
        cost = self.run.cost - self.before
        lrs = [float(x) for x in self.path["lrs"]]
        losses = [None if x is None else float(x) for x in self.path["losses"]]
        _log(self.ctx, lrs, losses, chosen)
        trained = Trained(epochs, Wsd(**chosen["schedule"]), _score(chosen), BEST, worker_id())
        return Stage("epochs", trained, _why(self.done, winner, self.ctx.task.epochs),
                     alternatives=[{k: b[k] for k in ("epochs", "steps", "score", "loss")} for b in self.done],
                     evidence={"branches": [{k: v for k, v in b.items() if k not in ("lrs", "losses")}
                                            for b in self.done],
                               "winner": winner, "from_step": self._from, "lrs": _thin(lrs),
                               "trunk_lrs": _thin(self.path["trunk_lrs"]), "max_epochs": self.ctx.task.epochs,
                               "peak_disk_bytes": self.peak_disk},
                     spent=cost)


def _log(ctx: Context, lrs: list[float], losses: list[float | None], chosen: dict[str, Any]) -> None:
    """``runs/final/metrics.csv``: the winning branch's path (the trunk up to it, then its decay), each step's LR
    and training loss and its one validation, in the layout ``fit`` writes (what ``gradpilot diagnose`` reads)."""
    task = ctx.task
    column = metric_column(getattr(task.metric, "__name__", None), task.higher_is_better) if task.metric else None
    log = MetricsLog(ctx.out / "runs" / "final", column)
    log.write(losses, lrs, [len(losses)], [float(chosen["loss"])], [float(chosen["score"])] if column else [],
              rewrite=True)


def _winner(done: list[dict[str, Any]], higher: bool) -> int:
    """The branch that validated best; of equal ones, the longest (more training, the same score)."""
    win = 0
    for i, b in enumerate(done):
        if not better(_score(done[win]), _score(b), higher_is_better=higher):
            win = i
    return win


def _score(branch: dict[str, Any]) -> float:
    """A branch's score as noted (JSON's null for one that was not finite: NaN)."""
    return math.nan if branch["score"] is None else float(branch["score"])


def _why(done: list[dict[str, Any]], winner: int, task_epochs: int) -> str:
    b = done[winner]
    scores = ", ".join(f"{d['epochs']}: {_score(d):.4g}" for d in done)
    fewer = "" if b["epochs"] == task_epochs else f" (the task had {task_epochs})"
    if len(done) == 1:
        return (f"the trunk trained {b['epochs']} epochs{fewer}, its last {b['decay']} steps decaying the LR; "
                f"it validates at {_score(b):.4g}")
    return (f"of the branches decayed at {len(done)} points (epochs: score — {scores}), the one at {b['epochs']} "
            f"epochs validated best{fewer}")


def _schedule(schedule: Wsd) -> dict[str, Any]:
    return dataclasses.asdict(schedule)


def _thin(values: list[float], most: int = 20_000) -> list[float]:
    """A long LR record, every n-th value (tune.json stays small; the test runs are far shorter)."""
    stride = max(1, math.ceil(len(values) / most))
    return values[::stride]


def _save_weights(path: Path, weights: dict[str, Any]) -> float:
    """Save a branch's weights; the seconds it took (checkpoint I/O)."""
    begin = time.perf_counter()
    _checkpoint.save_file(path, weights)
    return time.perf_counter() - begin


def _fresh(ctx: Context, chosen: Chosen) -> Stage:
    """A fixed schedule that decays from the start (linear, cosine_with_min_lr): one run from the initial weights
    at the chosen LR and batch over the epochs, the search's runs aside."""
    name = str(ctx.fixed["lr_scheduler_type"])
    n = int(ctx.fixed.get("num_train_epochs", ctx.task.epochs))
    total = budget.steps_per_epoch(ctx.train_items, chosen.micro_batch, chosen.accumulation) * n
    warm = min(chosen.warmup_steps, total - 1)
    cosine = name == "cosine_with_min_lr"
    schedule = cosine_with_min_lr(warm, total, MIN_LR_RATE) if cosine else Wsd(warm, 0, total - warm)
    ctx.say(f"{name} over {n} epochs")
    run = runner.start(ctx.task, Setting(chosen.learning_rate, chosen.micro_batch, chosen.accumulation, schedule),
                       seed=ctx.seed, weights=ctx.initial, folder=ctx.out / "runs" / "trunk-work")
    run.advance(total)
    score = run.evaluate()
    run.cost += Cost(io=_save_weights(ctx.out / "runs" / BEST, run.weights()))
    kwargs = {"min_lr": MIN_LR_RATE * chosen.learning_rate} if cosine else {}
    trained = Trained(n, schedule, score.value, BEST, worker_id(), name, kwargs)
    branch = {"epochs": n, "start": warm, "decay": total - warm, "steps": total, "score": score.value,
              "loss": score.loss, "schedule": _schedule(schedule)}
    _log(ctx, run.lrs, list(run.losses), branch)
    cost = run.cost
    return Stage("epochs", trained, f"{name} is fixed: one run of {n} epochs under it validates at {score.value:.4g}",
                 evidence={"branches": [branch], "winner": 0, "lrs": _thin(run.lrs), "max_epochs": ctx.task.epochs},
                 spent=cost, skipped="fixed")


def schedule(ctx: Context) -> Stage:
    """The plan's schedule: exactly what the run behind model.pt trained on, in transformers' names."""
    trained: Trained = ctx.decided.need("epochs")
    args = trained.training_arguments()
    name = args["lr_scheduler_type"]
    fixed = ctx.fixed.get("lr_scheduler_type")
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
