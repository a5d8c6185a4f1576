"""The measured LR verdict: from a run's checkpoint, train short branches at its LR ×⅓, ×1 and ×3 — each at a
constant LR, then scored after a cooldown, as tune's search scores its candidates — validate them, and say
whether the LR is too high, too low or about right, with the numbers. What one log cannot tell, a tenth of a
run measures.

Every branch trains through ``gradpilot.train.run`` as tune's runs do: the task's own trainer where it has one (a
``make_trainer`` file: ``Trainer.train()`` / ``Trainer.fit()``, its optimizer given the checkpoint's state),
else ``LocalRun``. Checkpoints: gradpilot's (``last.pt`` or its folder), a Hugging Face ``checkpoint-N`` folder,
a Lightning ``.ckpt``.
"""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gradpilot._files import json_safe
from gradpilot.diagnosis.detectors import diagnose
from gradpilot.diagnosis.history import History
from gradpilot.errors import GradpilotError
from gradpilot.train.run import start as start_run
from gradpilot.train.seam import Run, Setting
from gradpilot.train.starts import Start, read_start
from gradpilot.train.state import load_weights, model_state, preserved
from gradpilot.train.task import Task

UNSURE = "unsure"
FACTORS = (1.0, 3.0, 1 / 3)
MAX_BRANCHES = 5  # the first three, then up to two more ×3 steps towards the better end
SHARE = 0.1  # of one run's items, all branches together
COOLDOWN = 0.5  # share of each branch spent decaying the LR before it is scored
TIE_HIGHER = 0.3  # a higher branch's gain in validation loss must beat ×1's by this share of it to raise the LR
TIE_LOWER = 0.05  # ... a lower one's, to lower it — where the run's log also shows a sign of a too-high LR
# (benchmarks/probe.py, leave-one-family-out: from almost any checkpoint a lower LR wins a short branch — the
# cooldown's quick gain, a good LR's as much as a too-high one's — so the branches alone never say "too high")


LOWERED = ("unsure: a higher LR won the short branches, but the tune that wrote this plan lowered its LR on purpose: "
           "at higher LRs every finalist of its search overfit within runs far shorter than the plan's, and branches "
           "this short favour a higher LR the same way — the LR is kept")


@dataclass(frozen=True)
class ProbeResult:
    """The probe's answer: the verdict, the LR now and the one to use, each branch's score and the cost."""

    verdict: str  # "too high", "too low", "about right", or "unsure" (the log and the branches disagree)
    learning_rate: float  # the run's LR at the checkpoint
    suggested_learning_rate: float
    scores: tuple[tuple[float, float], ...]  # (factor, the task's validation score after the branch's cooldown)
    losses: tuple[tuple[float, float], ...]  # (factor, validation loss there: what the verdict compares)
    metric: str
    higher_is_better: bool
    samples: int  # items trained by all branches
    cost_runs: float  # those items over one run's (the task's epochs over its training set)
    seconds: float
    notes: tuple[str, ...] = ()
    start_loss: float = math.nan  # the validation loss at the checkpoint, each branch's gain measured from it

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = json_safe({
            "verdict": self.verdict, "learning_rate": self.learning_rate,
            "suggested_learning_rate": self.suggested_learning_rate,
            "branches": [{"factor": f, "learning_rate": self.learning_rate * f, "score": s, "val_loss": loss}
                         for (f, s), (_, loss) in zip(self.scores, self.losses, strict=True)],
            "metric": self.metric, "higher_is_better": self.higher_is_better, "samples": self.samples,
            "cost_runs": round(self.cost_runs, 4), "seconds": round(self.seconds, 2), "notes": list(self.notes),
            "start_val_loss": self.start_loss})
        return out


def probe(task: Task, checkpoint: str | Path, *, share: float = SHARE, seed: int = 0,
          learning_rate: float | None = None, progress: Callable[[str], None] | None = None) -> ProbeResult:
    """Measure whether the LR of the run saved at ``checkpoint`` is too high, too low or about right for
    ``task`` (the task the run trains: its model, data, loss, metric and batch size). Branches at ×⅓, ×1 and ×3
    first; while the best is at an end, one more ×3 step that way (at most ``MAX_BRANCHES`` in all), so the LR
    named is where the loss stopped improving. ``share`` of one run's items are spent at most;
    ``learning_rate`` overrides the LR read from the checkpoint; ``progress(message)`` hears when the branches
    start (once everything given has been checked and the checkpoint read)."""
    _check(task, share, learning_rate)
    start = read_start(Path(checkpoint), task.model)
    lr = learning_rate if learning_rate is not None else start.lr
    if lr is None or not math.isfinite(lr) or lr <= 0:
        raise GradpilotError(f"{checkpoint}: the checkpoint does not say its learning rate; pass --lr")
    if progress is not None:
        progress(f"probing {checkpoint} at lr {lr:.3g}: 3 to 5 branches, {share:.0%} of a run at most")
    return probe_from(task, start, lr, share=share, seed=seed)


def probe_live(task: Task, optimizer: torch.optim.Optimizer, *, share: float = SHARE, seed: int = 0,
               history: History | None = None) -> ProbeResult:
    """The same measurement from a run in progress: ``task.model`` as it stands and ``optimizer``'s state and LR
    (its first param group's), with the run's ``history`` so far as its log. Everything is put back as it was —
    weights, gradients, modes, the optimizer and torch's RNGs — so training goes on as if nothing had happened
    (a callback's probe)."""
    lr = float(optimizer.param_groups[0]["lr"])
    if lr <= 0:
        raise GradpilotError("the run's LR is 0 (the end of its decay, or a warmup's start): there is no LR to probe "
                             "until it moves")
    _check(task, share, lr)
    start = Start(model_state(task.model), copy.deepcopy(optimizer.state_dict()), lr, history=history)
    with preserved(task.model, optimizer):
        return probe_from(task, start, lr, share=share, seed=seed)


def live_task(model: torch.nn.Module, optimizer: torch.optim.Optimizer, train: Any, evaluation: Any,
              loss: Callable[[torch.nn.Module, Any], torch.Tensor], *, items: int,
              max_grad_norm: float | None = None, batch_size: int | None = None, accumulation: int = 1) -> Task:
    """A run in progress as a ``Task`` for ``probe_live``: its model, its loss from a batch, its dataloaders and
    accumulation, and optimizers made like its own (``mirror``); one run is ``items`` items of its training."""
    batch = batch_size or int(getattr(train, "batch_size", None) or 1)
    return Task(model=model, train_data=train, val_data=evaluation, loss_fn=None, step_fn=loss,
                optimizer=mirror(optimizer), lr=float(optimizer.param_groups[0]["lr"]) or 1.0, batch_size=batch,
                accumulation=accumulation, epochs=max(1, math.ceil(items / len(train.dataset))), name="trainer run",
                max_grad_norm=max_grad_norm)


def mirror(optimizer: torch.optim.Optimizer) -> Callable[[Iterable[torch.nn.Parameter], float], torch.optim.Optimizer]:
    """Optimizers made like ``optimizer``, whatever its class and torch's version: its class over its param
    groups, then its own ``state_dict`` loaded (every setting it holds, as it holds it), each group's LR set to
    the new LR times its ratio to the first group's."""
    first = float(optimizer.param_groups[0]["lr"]) or 1.0
    ratios = [float(g["lr"]) / first if first else 1.0 for g in optimizer.param_groups]

    def make(_params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
        groups = [{"params": list(g["params"])} for g in optimizer.param_groups]
        cls: Any = type(optimizer)
        try:
            made: torch.optim.Optimizer = cls(groups, lr=lr)
        except TypeError:
            made = cls(groups)
        made.load_state_dict(optimizer.state_dict())  # every setting (betas, decay, ...) as the run's optimizer has it
        for group, ratio in zip(made.param_groups, ratios, strict=True):
            group["lr"] = lr * ratio
            group.pop("initial_lr", None)
        return made

    return make


def _check(task: Task, share: float, learning_rate: float | None) -> None:
    if not 0 < share <= 1:
        raise GradpilotError(f"share must be in (0, 1], got {share}")
    if task.val_data is None:
        raise GradpilotError("probing needs validation data to compare the branches: give the task val_data")
    if learning_rate is not None and not (math.isfinite(learning_rate) and learning_rate > 0):
        raise GradpilotError(f"the learning rate must be a positive number, got {learning_rate}")


def probe_from(task: Task, start: Start, lr: float, *, share: float = SHARE, seed: int = 0) -> ProbeResult:
    """The probe's branches from ``start`` at ``lr``, and the verdict they measure; each trains through the
    task's runner (its own trainer's, where it has one), in a folder of its own that is gone afterwards."""
    with tempfile.TemporaryDirectory(prefix="gradpilot-probe-") as folder:
        return _probe_in(_Walk(task, start, lr, seed, _branch_batches(task, share), Path(folder)), share)


def _probe_in(walk: _Walk, share: float) -> ProbeResult:
    at_start = walk.evaluate_start()
    if not math.isfinite(at_start):
        return walk.result("too high", 0.1, share, ("the checkpoint's validation loss is not finite: the run has "
                                                    "already blown up; restart from an earlier checkpoint",))
    for factor in FACTORS:
        walk.branch(factor)
    verdict, notes, told = _weighed(walk, at_start)
    if verdict == UNSURE:
        return walk.result(verdict, 1.0, share, notes)
    best = walk.on(verdict)
    if told is not None and told[0] == verdict == "too high":
        best = min(best, told[2])  # a run the log says broke: at least the diagnosis's own cut
    if verdict == "about right" and all(not math.isfinite(loss) for _, loss in walk.losses):
        verdict, best = "too high", 0.1  # every branch blew up, ×⅓ included
    return walk.result(verdict, best, share, notes)


def _weighed(walk: _Walk, at_start: float) -> tuple[str, tuple[str, ...], tuple[str, str, float] | None]:
    """The branches' verdict weighed against what else is known — a tune's LR lowered on purpose for the run's
    length, the run's own log — with its notes, and what the log told (or None)."""
    verdict, _, said = _verdict(at_start, walk.losses, _hints_high(walk.start))
    if verdict == "too low" and walk.start.lowered_for_length:
        return UNSURE, (LOWERED,), None
    told = _told_by_log(walk.start, walk.lr)
    notes: tuple[str, ...] = (said,) if said else ()
    if told is not None and told[0] != verdict:
        verdict, notes = reconcile(verdict, told[0], told[1])
    return verdict, notes, told


def reconcile(branches: str, log: str, words: str) -> tuple[str, tuple[str, ...]]:
    """The verdict where the run's log (a sign calibrated to be right) differs from the branches': the log
    decides over branches that saw no clear difference, but where the two point opposite ways neither is followed
    — "unsure", the LR kept, both said (benchmarks/probe.py: in such cases each was right about half the time,
    and a far-too-low LR told to go lower by a noisy log is advice that plainly hurts)."""
    if branches == "about right":
        return log, (words,)
    return UNSURE, (f"unsure: {words}; but the branches from the checkpoint say the opposite ({branches}): the LR is "
                    "kept — a longer branch (--share) or the run's full log will tell",)


class _Walk:
    """The probe's branches so far, each from the checkpoint, and what they cost."""

    def __init__(self, task: Task, start: Start, lr: float, seed: int, batches: tuple[int, int, int],
                 folder: Path) -> None:
        self.task, self.start, self.lr, self.seed, self.folder = task, start, lr, seed, folder
        self.steady, self.cooldown, self.most = batches
        self.scores: list[tuple[float, float]] = []
        self.losses: list[tuple[float, float]] = []
        self.samples, self.seconds = 0, 0.0
        self.at_start = math.nan

    @property
    def tried(self) -> list[float]:
        return [f for f, _ in self.losses]

    def on(self, verdict: str) -> float:
        """While the best branch the verdict's way is the last one that way, one ×3 step further (within the
        branches the share pays for); the best factor then."""
        best = _best_towards(verdict, self.losses)
        while verdict != "about right" and best in (min(self.tried), max(self.tried)) and len(self.tried) < self.most:
            self.branch(best * 3 if best > 1 else best / 3)
            best = _best_towards(verdict, self.losses)
        return best

    def evaluate_start(self) -> float:
        """The validation loss at the checkpoint itself, measured as the branches' are: what each branch's gain
        is measured from."""
        run = self._run(1.0, "start")
        loss = run.evaluate().loss
        self.seconds += run.cost.seconds
        self.at_start = loss
        return loss

    def _run(self, factor: float, name: str) -> Run:
        """A run of the task's runner from the checkpoint (its optimizer state too, where it fits) at the LR ×
        ``factor``."""
        setting, folder = Setting(self.lr * factor, self.task.batch_size, self.task.accumulation), self.folder / name
        try:
            return start_run(self.task, setting, seed=self.seed, weights=self.start.weights,
                             optimizer_state=self.start.optimizer, folder=folder)
        except (ValueError, KeyError, RuntimeError):  # an optimizer state of another shape: start that afresh
            return start_run(self.task, setting, seed=self.seed, weights=self.start.weights, folder=folder)

    def branch(self, factor: float) -> None:
        folder = f"branch-{len(self.losses)}"
        run = self._run(factor, folder)
        run.advance(self.steady)
        score = run.branch(self.cooldown).score
        shutil.rmtree(self.folder / folder, ignore_errors=True)  # a trainer's checkpoint: one branch's at a time
        self.scores.append((factor, score.value))
        self.losses.append((factor, score.loss))
        self.samples += run.cost.items
        self.seconds += run.cost.seconds

    def result(self, verdict: str, best: float, share: float, notes: tuple[str, ...]) -> ProbeResult:
        load_weights(self.task.model, self.start.weights)  # the task's model as the checkpoint left it
        cost = self.samples / _run_items(self.task)
        if cost > share * 1.0001:
            notes += (f"one run is so short that the smallest branches cost {cost:.0%} of it, over the "
                      f"{share:.0%} asked",)
        order = sorted(range(len(self.losses)), key=lambda i: self.losses[i][0])
        return ProbeResult(verdict, self.lr, self.lr * best, tuple(self.scores[i] for i in order),
                           tuple(self.losses[i] for i in order), self.task.metric_label, self.task.higher_is_better,
                           self.samples, cost, self.seconds, self.start.notes + notes, self.at_start)


def _told_by_log(start: Start, lr: float) -> tuple[str, str, float] | None:
    """The verdict the run's own log gives from a sign calibrated to be right (``Finding.sure``), the words, and
    the factor its remedy puts on ``lr``; or None."""
    if start.history is None:
        return None
    found = diagnose(start.history)
    if found.lr_verdict not in ("too high", "too low"):
        return None
    named = [f.remedy["learning_rate"] for f in found.findings if f.sure and "learning_rate" in f.remedy]
    peak = max(start.history.lr.values) if start.history.lr is not None and len(start.history.lr) else lr
    factor = float(named[0]) / float(peak) if named and peak > 0 else (1 / 3 if found.lr_verdict == "too high" else 3)
    return found.lr_verdict, f"the run's log decides: {found.lr_reason}", factor


def _hints_high(start: Start) -> bool:
    """Whether the run's log (where the checkpoint has one beside it) shows any sign of a too-high LR, sure or a
    hint (``Finding.lr``)."""
    return start.history is not None and any(f.lr == "lower" for f in diagnose(start.history).findings)


def _best_towards(verdict: str, losses: list[tuple[float, float]]) -> float:
    """The branch with the lowest loss on the side the verdict points to (×⅓ or ×3 when none was finite)."""
    side = [(f, loss) for f, loss in losses if (f < 1 if verdict == "too high" else f > 1) and math.isfinite(loss)]
    if verdict == "about right":
        return 1.0
    if not side:
        return 1 / 3 if verdict == "too high" else 3.0
    return min(side, key=lambda fl: fl[1])[0]


def _run_items(task: Task) -> int:
    dataset, _ = task.dataset()
    return max(1, task.epochs * len(dataset))  # type: ignore[arg-type]


def _branch_batches(task: Task, share: float) -> tuple[int, int, int]:
    """Batches per branch at the constant LR and in its cooldown, and how many branches the share pays for: the
    share of one run in whole batches, split between up to ``MAX_BRANCHES`` (each at least three batches)."""
    total = int(share * _run_items(task) / task.batch)
    per = max(3, total // MAX_BRANCHES)
    most = max(len(FACTORS), min(MAX_BRANCHES, total // per))
    cooldown = max(1, round(COOLDOWN * per))
    return per - cooldown, cooldown, most


def _verdict(at_start: float, losses: list[tuple[float, float]], hinted: bool) -> tuple[str, float, str]:
    """The branch that lowered the validation loss most, what it says, and a note: ×1 keeps the LR unless a
    higher branch's gain beats its gain clearly (by ``TIE_HIGHER`` of the larger gain), or a lower one's does
    (by ``TIE_LOWER``) where the run shows a sign of a too-high LR (``hinted``: its log, or the ×1 branch
    blowing up). The loss decides: after so short a branch a metric such as accuracy barely moves, the loss
    does."""
    gains = [(f, at_start - loss if math.isfinite(loss) else -math.inf) for f, loss in losses]
    best_factor, best = max(gains, key=lambda fg: fg[1])
    here = dict(gains)[1.0]
    tie = TIE_HIGHER if best_factor > 1 else TIE_LOWER
    if best_factor == 1.0 or best - here <= max(tie * abs(best), 1e-4 * abs(at_start)):
        return "about right", 1.0, ""
    if best_factor > 1:
        return "too low", best_factor, ""
    if hinted or not math.isfinite(here):
        return "too high", best_factor, ""
    return "about right", 1.0, (f"a lower LR won the short branches (×{best_factor:.3g}), as it does from almost any "
                                "checkpoint — a cooldown's quick gain; with no sign of a too-high LR in the run's "
                                "log that is not called too high")
