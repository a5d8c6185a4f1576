"""The search's LR corrected for the full run's length, where every finalist overfit within the search."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from gradpilot.train.task import Task
from gradpilot.tuning import horizon, tune
from gradpilot.tuning.state import TrialRecord


def _trial(lr: float, **scores: float) -> TrialRecord:
    return TrialRecord(0, lr, 16, "running", {k.lstrip("r"): v for k, v in scores.items()}, 0, 0.0)


def test_overtrained_needs_every_finalist_worse_at_the_last_rung():
    pruned = _trial(1e-4, r100=3.0)  # never reached the last rung: no evidence either way
    worse = [_trial(1e-3, r100=2.0, r300=2.5), _trial(3e-3, r100=2.2, r300=2.4), pruned]
    found = horizon.overtrained(worse, (100, 300), 0.2, higher_is_better=False)
    assert found is not None
    assert found.lr == 1e-3 and found.score == 2.0  # the finalist best at the rung before
    assert found.best_items == 120  # the rung before's 100 items and its cooldown of a fifth
    assert sorted(found.finalists) == [(1e-3, 2.0, 2.5), (3e-3, 2.2, 2.4)]
    one_improved = [_trial(1e-3, r100=2.0, r300=2.5), _trial(3e-3, r100=2.2, r300=2.1)]
    assert horizon.overtrained(one_improved, (100, 300), 0.2, higher_is_better=False) is None
    assert horizon.overtrained(worse[:1], (100, 300), 0.2, higher_is_better=False) is None  # one finalist
    assert horizon.overtrained(worse, (100,), 0.2, higher_is_better=False) is None  # one rung
    broke = [_trial(1e-3, r100=2.0, r300=math.nan), _trial(3e-3, r100=2.2, r300=2.4)]
    assert horizon.overtrained(broke, (100, 300), 0.2, higher_is_better=False) is None
    accuracy = [_trial(1e-3, r100=0.9, r300=0.8), _trial(3e-3, r100=0.85, r300=0.84)]
    found = horizon.overtrained(accuracy, (100, 300), 0.0, higher_is_better=True)
    assert found is not None and found.lr == 1e-3 and found.best_items == 100
    assert horizon.overtrained(accuracy, (100, 300), 0.0, higher_is_better=False) is None  # lower is better: improved


def test_the_correction_keeps_lr_times_items_within_its_bounds():
    assert horizon.corrected(1e-3, 300, 3000) == pytest.approx(1e-4)
    assert horizon.corrected(1e-3, 5000, 3000) == 1e-3  # never raised
    assert horizon.corrected(1e-3, 1, 10**6) == pytest.approx(1e-3 / 10**1.5)  # at most a decade and a half


def noisy_regression(seed: int = 0, n: int = 96) -> Task:
    """Few rows, noisy targets and a wide MLP under Adam: at the LRs a short run likes, it overfits in a few
    epochs (sklearn's diabetes in miniature)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2 * n, 8, generator=g)
    y = x[:, :2].sum(1) + 1.5 * torch.randn(2 * n, generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1))

    def loss(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(out.squeeze(-1), t)

    return Task(model=model, train_data=TensorDataset(x[:n], y[:n]), val_data=TensorDataset(x[n:], y[n:]),
                loss_fn=loss, optimizer="adam", lr=1e-3, batch_size=16, epochs=40, name="noisy")


def test_a_task_that_overfits_within_the_search_is_trained_afresh_at_a_lower_lr(tmp_path, monkeypatch):
    result = tune(noisy_regression(), budget=2, out_dir=tmp_path / "corrected")
    search = next(s for s in result.stages if s.name == "lr_search")
    over = search.evidence.overtrained
    assert over is not None and search.decision.trial is None  # the trunk does not go on from the search's run
    assert "overfits" in search.why and "afresh" in search.why
    horizon_items = search.decision.branches[-1] * 96
    assert result.plan["learning_rate"] == pytest.approx(over.lr * over.best_items / horizon_items)
    assert result.plan["learning_rate"] < min(t.lr for t in search.evidence.trials)  # out of the bracket, below
    epochs = next(s for s in result.stages if s.name == "epochs")
    assert epochs.evidence.from_step == 0
    assert not any((tmp_path / "corrected" / "runs" / "search").glob("trial-*"))  # nothing left to go on from
    assert result.spent_items <= 2  # the fresh trunk is paid for within the budget
    assert result.metric < over.score  # better than the best the search's short runs validated (lower is better)
    monkeypatch.setattr(horizon, "overtrained", lambda *_a, **_k: None)  # the search's winner, continued as raced
    raced = tune(noisy_regression(), budget=2, out_dir=tmp_path / "raced")
    assert result.metric < raced.metric
