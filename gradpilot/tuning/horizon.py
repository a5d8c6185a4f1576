"""The search's LR, corrected for the full run's length — where the search itself shows it is needed (no torch).

A short run favours a larger LR than a long one: the best LR falls with the training horizon (Bjorck et al. 2024,
arXiv 2409.19913). Most of the time the search cannot measure by how much, and its winner is kept as raced. One
case it can: every finalist — each candidate that reached the last rung — validated *worse* there than at the
rung before. The task overfits within the search's runs at these LRs: the trunk, going on from the winner's run,
could only get worse, and its branches would choose fewer epochs than the task's at an LR tuned for the short run.

Then the trunk starts afresh at an LR that trains the full horizon as far as the best short run got: the same
LR × items (with Adam or SGD, how far the weights can move grows with both), ``lr × best_items / horizon_items``,
no more than ``MOST`` below the winner. On sklearn's diabetes under Adam (442 rows) the finalists peaked after 4
epochs at lr 1.3e-3; the correction gives 1.05e-4 over 60 epochs, where a grid of constant LRs finds 9.9e-5 best.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradpilot._direction import better
from gradpilot.tuning.state import Overtrained, TrialRecord

MOST = 10**1.5  # the correction lowers the LR by at most a decade and a half


def overtrained(trials: Sequence[TrialRecord], rungs: Sequence[int], cooldown: float, higher_is_better: bool
                ) -> Overtrained | None:
    """The evidence that the search's LRs overfit within its own runs, or None: at least two finalists, each
    finite and each worse at the last rung than at the rung before."""
    pairs = _finalists(trials, rungs)
    if len(pairs) < 2 or not all(better(a, b, higher_is_better=higher_is_better) for _, a, b in pairs):
        return None
    lr, score, _ = min(pairs, key=lambda p: -p[1] if higher_is_better else p[1])
    return Overtrained(lr, score, round(rungs[-2] * (1 + cooldown)), tuple(pairs))


def _finalists(trials: Sequence[TrialRecord], rungs: Sequence[int]) -> list[tuple[float, float, float]]:
    """(lr, score at the rung before the last, score at the last) of each candidate that reached the last rung;
    none where there is one rung or a finalist's score is not finite (a broken run is no evidence)."""
    if len(rungs) < 2:
        return []
    last, before = str(rungs[-1]), str(rungs[-2])
    pairs = [(t.lr, t.scores[before], t.scores[last]) for t in trials if last in t.scores and before in t.scores]
    return pairs if all(math.isfinite(a) and math.isfinite(b) for _, a, b in pairs) else []


def corrected(lr: float, best_items: int, horizon_items: int) -> float:
    """The LR that trains ``horizon_items`` as far as ``lr`` trained ``best_items`` (the same LR × items), never
    above ``lr`` nor more than ``MOST`` below it."""
    factor = min(1.0, max(1 / MOST, best_items / max(1, horizon_items)))
    return lr * factor
