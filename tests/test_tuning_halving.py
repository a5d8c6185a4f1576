"""Successive halving on its own: promotion with plain numbers, halving a scored study (the pruned runs'
files deleted), the winner at the longest rung, the budget check, and one job trained through the runner."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from gradpilot.tuning import halving
from gradpilot.tuning.folder import TuneFolder
from gradpilot.tuning.halving import Candidate, Halving, Plan
from tests.conftest import small_task


def scored_study(direction: str, scores: dict[int, dict[int, float]]) -> optuna.Study:
    """A study whose trial ``i`` (lr = 10^-i) is still running with the given scores per rung."""
    study = optuna.create_study(direction=direction)
    for i, rungs in scores.items():
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING, params={"lr": 10.0**-i, "micro_batch": 32, "accumulation": 1},
            distributions=halving.DISTRIBUTIONS, intermediate_values=rungs, user_attrs={"index": i}))
    return study


def searcher(folder: Path, higher: bool) -> Halving:
    task = small_task()
    object.__setattr__(task, "higher_is_better", higher)
    return Halving(optuna.storages.InMemoryStorage(), "p", task, {}, seed=0, folder=TuneFolder(folder))


@pytest.mark.parametrize("higher", [True, False])
def test_halve_promotes_the_best_third_and_deletes_the_pruned_runs(tmp_path, higher):
    scores = {0: 0.5, 1: 0.9, 2: 0.7, 3: 0.2, 4: 0.8, 5: 0.4}
    study = scored_study("maximize" if higher else "minimize", {i: {100: v} for i, v in scores.items()})
    search = TuneFolder(tmp_path).search
    for t in study.trials:
        (search / f"trial-{t.number}").mkdir(parents=True)
    plan = Plan(tuple(Candidate(10.0**-i, 32) for i in scores), (100, 300), 0.2, 10**6)
    promoted = searcher(tmp_path, higher).halve(study, plan, 0)
    assert promoted == ([1, 4] if higher else [3, 5])  # 6 candidates: the best 2 go on, best first
    assert searcher(tmp_path, higher).halve(study, plan, 0) == promoted  # done again after a kill: the same
    pruned = [t.number for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert sorted(pruned) == sorted(set(scores) - set(promoted))
    assert sorted(p.name for p in search.iterdir()) == [f"trial-{i}" for i in sorted(promoted)]


@pytest.mark.parametrize(("scores", "higher", "going"), [
    ([0.5, 0.9, 0.7, 0.2, 0.8, 0.4], True, [1, 4]),  # a third of six
    ([0.5, 0.9, 0.7, 0.2, 0.8, 0.4], False, [3, 5]),
    ([0.3, 0.1, 0.2, 0.6, 0.5], True, [3, 4]),  # a third of five is one: two go on all the same
    ([0.3, 0.1], False, [1, 0]),  # both of two
    ([0.3], True, [0]),  # the one there is
    ([float("nan"), 0.1, 0.2], True, [2, 1]),
    ([float("nan"), float("nan")], True, []),  # a run that diverged never goes on
    ([float("nan"), 0.1], True, [1]),
    ([0.1] * 9, True, [0, 1, 2]),
])
def test_promote_the_best_third(scores, higher, going):
    assert halving.promote(scores, higher_is_better=higher) == going


def test_the_winner_is_the_best_at_the_longest_rung_reached():
    scores = {0: {100: 0.6, 300: 0.80}, 1: {100: 0.95}, 2: {100: 0.7, 300: 0.85}, 3: {100: 0.5, 300: float("nan")}}
    trial, score, rung = halving.best(scored_study("maximize", scores), higher_is_better=True)
    assert (trial.params["lr"], score, rung) == (pytest.approx(1e-2), 0.85, 300)  # 0.95 came at a shorter rung
    trial, score, rung = halving.best(scored_study("minimize", scores), higher_is_better=False)
    assert (trial.params["lr"], score, rung) == (pytest.approx(1.0), 0.80, 300)  # the NaN never wins
    with pytest.raises(ValueError, match="no trial reached its first rung"):
        halving.best(scored_study("maximize", {0: {}}), higher_is_better=True)


def test_a_plan_s_steps_cooldowns_and_what_each_rung_keeps():
    plan = Plan((Candidate(1e-3, 32), Candidate(1e-2, 16, 4)), (320, 960), 0.2, 10**6)
    assert plan.steps(0, 0) == (10, 2) and plan.steps(1, 1) == (15, 3)  # batch 64: 960 items are 15 steps
    assert plan.keep(0) == 2 and plan.keep(1) == 1  # 2 candidates: both go on to the second rung; the winner stays
    assert Plan.read(plan.note()) == plan


def test_the_budget_check_counts_the_steps_left_and_the_cooldown():
    assert halving.pays(spent=900, done_steps=0, to_step=2, cooldown=1, batch=32, allowance=996)  # 900 + 96
    assert not halving.pays(spent=901, done_steps=0, to_step=2, cooldown=1, batch=32, allowance=996)
    assert halving.pays(spent=0, done_steps=10, to_step=30, cooldown=6, batch=32, allowance=26 * 32)


def test_a_job_trains_to_its_rung_and_saves_a_run_the_next_rung_goes_on_from(tmp_path):
    from gradpilot.train.state import model_state

    task = small_task()
    initial = model_state(task.model)
    plan = Plan((Candidate(0.01, 32),), (320, 960), 0.2, 10**6)
    value, cost = halving.train_job(task, plan, 0, 0, seed=0, initial=initial, load=None, save=tmp_path / "r")
    assert 0.0 <= value <= 1.0 and cost.items == (10 + 2) * 32 and cost.training > 0 and cost.validation > 0
    _, more = halving.train_job(task, plan, 0, 1, seed=0, initial=initial, load=tmp_path / "r", save=None)
    assert more.items == (30 - 10 + 6) * 32  # on from step 10 to 30, then 6 cooldown steps: not from the start
