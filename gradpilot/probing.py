"""The measured LR verdict: from a run's checkpoint, train short branches at its LR ×⅓, ×1 and ×3 — each at a
constant LR, then scored after a cooldown, as tune's search scores its candidates — validate them, and say
whether the LR is too high, too low or about right, with the numbers. What one log cannot tell, a tenth of a
run measures.

Every branch trains through ``runner.LocalRun`` (the runner tune's search uses). Checkpoints: gradpilot's
(``last.pt`` or its folder), a Hugging Face ``checkpoint-N`` folder, a Lightning ``.ckpt``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradpilot._checkpoint_formats import Start, read_start
from gradpilot._files import json_safe
from gradpilot.errors import GradpilotError
from gradpilot.evaluation import evaluate_both
from gradpilot.runner import LocalRun, Setting
from gradpilot.task import Task

FACTORS = (1 / 3, 1.0, 3.0)
SHARE = 0.1  # of one run's items, all branches together
COOLDOWN = 0.25  # share of each branch spent decaying the LR before it is scored
TIE = 0.2  # another branch's gain in validation loss must beat ×1's by this share of it to move the LR


@dataclass(frozen=True)
class ProbeResult:
    """The probe's answer: the verdict, the LR now and the one to use, each branch's score and the cost."""

    verdict: str  # "too high", "too low" or "about right"
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

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = json_safe({
            "verdict": self.verdict, "learning_rate": self.learning_rate,
            "suggested_learning_rate": self.suggested_learning_rate,
            "branches": [{"factor": f, "learning_rate": self.learning_rate * f, "score": s, "val_loss": loss}
                         for (f, s), (_, loss) in zip(self.scores, self.losses, strict=True)],
            "metric": self.metric, "higher_is_better": self.higher_is_better, "samples": self.samples,
            "cost_runs": round(self.cost_runs, 4), "seconds": round(self.seconds, 2), "notes": list(self.notes)})
        return out


def probe(task: Task, checkpoint: str | Path, *, share: float = SHARE, seed: int = 0,
          learning_rate: float | None = None) -> ProbeResult:
    """Measure whether the LR of the run saved at ``checkpoint`` is too high, too low or about right for
    ``task`` (the task the run trains: its model, data, loss, metric and batch size). ``share`` of one run's
    items are spent, split between the branches; ``learning_rate`` overrides the LR read from the checkpoint."""
    if not 0 < share <= 1:
        raise GradpilotError(f"share must be in (0, 1], got {share}")
    if task.val_data is None:
        raise GradpilotError("probing needs validation data to compare the branches: give the task val_data")
    start = read_start(Path(checkpoint), task.model)
    lr = learning_rate if learning_rate is not None else start.lr
    if lr is None or not math.isfinite(lr) or lr <= 0:
        raise GradpilotError(f"{checkpoint}: the checkpoint does not say its learning rate; pass --lr")
    steady, cooldown = _branch_batches(task, share)
    scores, losses, samples, seconds = [], [], 0, 0.0
    for factor in FACTORS:
        run = _run(task, start, lr * factor, seed)
        run.advance(steady * task.batch_size)
        scores.append((factor, run.score(cooldown * task.batch_size)))
        losses.append((factor, run.last_loss))
        samples += run.cost.samples
        seconds += run.cost.seconds
    task.model.load_state_dict(start.weights)  # the task's model as the checkpoint left it
    before = time.perf_counter()
    at_start = evaluate_both(task.model, task.val_loader() or [], task.loss_fn, step_fn=task.step_fn)[0]
    seconds += time.perf_counter() - before
    verdict, best = _verdict(at_start, losses)
    cost = samples / _run_items(task)
    notes = start.notes + ((f"one run is so short that four batches a branch cost {cost:.0%} of it, over the "
                            f"{share:.0%} asked",) if cost > share * 1.0001 else ())
    return ProbeResult(verdict, lr, lr * best, tuple(scores), tuple(losses), _metric_name(task),
                       task.higher_is_better, samples, cost, seconds, notes)


def _run(task: Task, start: Start, lr: float, seed: int) -> LocalRun:
    try:
        return LocalRun(task, Setting(lr, task.batch_size), seed=seed, weights=start.weights,
                        optimizer_state=start.optimizer)
    except (ValueError, KeyError, RuntimeError):  # an optimizer state of another shape: start that afresh
        return LocalRun(task, Setting(lr, task.batch_size), seed=seed, weights=start.weights)


def _run_items(task: Task) -> int:
    dataset, _ = task.dataset()
    return max(1, task.epochs * len(dataset))  # type: ignore[arg-type]


def _branch_batches(task: Task, share: float) -> tuple[int, int]:
    """Batches per branch at the constant LR and in its cooldown: the share of one run split between the
    branches in whole batches (never over the share, but at least three and one)."""
    batches = int(share * _run_items(task) / len(FACTORS) / task.batch_size)
    cooldown = max(1, round(COOLDOWN * batches))
    return max(3, batches - cooldown), cooldown


def _verdict(at_start: float, losses: list[tuple[float, float]]) -> tuple[str, float]:
    """The branch that lowered the validation loss most, and what it says: ×1 keeps the LR unless another
    branch's gain beats its gain clearly (by ``TIE`` of the larger gain). The loss decides: after so short a
    branch a metric such as accuracy barely moves, the loss does."""
    gains = [(f, at_start - loss if math.isfinite(loss) else -math.inf) for f, loss in losses]
    best_factor, best = max(gains, key=lambda fg: fg[1])
    here = dict(gains)[1.0]
    clearly = best - here > max(TIE * abs(best), 1e-4 * abs(at_start))
    if best_factor == 1.0 or not clearly:
        return "about right", 1.0
    return ("too low" if best_factor > 1 else "too high"), best_factor


def _metric_name(task: Task) -> str:
    if task.metric is None:
        return "validation loss"
    return str(getattr(task.metric, "__name__", "metric"))

