"""tune's budget and search policies on their own, with plain numbers: what the last two stages keep, how many
epochs they may train, when one run replaces two, the search's plan, its promotions and its winner."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from gradpilot import _final_stages, _search, _stages
from gradpilot._search import Candidate, SearchPlan
from gradpilot._stages import _Context
from tests.conftest import small_task

ITEMS, EPOCHS = 512, 4  # one run: 2048 items


def context(*, spent: int, budget_runs: float = 3.0, fixed=None, values=None, optimizer="adamw") -> _Context:
    task = small_task(n=ITEMS, epochs=EPOCHS, optimizer=optimizer)
    return _Context(task=task, out=Path("unused"), seed=0, fixed=fixed or {}, cooldown=0.2, train_items=ITEMS,
                    budget_samples=math.floor(budget_runs * ITEMS * EPOCHS), budget=budget_runs, initial={},
                    storage=None, prefix="p", progress=None, spent=spent, values=values or {})  # type: ignore[arg-type]


@pytest.mark.parametrize(("spent", "fixed", "kept"), [
    (1000, {}, 3344),  # left 5144: 65% of it (3344) pays for two runs of 3+ epochs
    (2000, {}, 2048),  # left 4144: 65% (2694) would cut both under 3 epochs: one full run instead
    (1000, {"lr_scheduler_type": "constant"}, 2048),  # one final run only, and 65% pays for all of it
    (1000, {"num_train_epochs": 2}, 2048),  # fixed epochs: two runs of exactly 2 epochs, whatever is left
    (5000, {}, 744),  # left 1144: 65% of it (743.6), under one run
])
def test_final_reserve(spent, fixed, kept):
    assert _stages._final_reserve(context(spent=spent, fixed=fixed)) == kept


@pytest.mark.parametrize(("left", "epochs"), [(10_000, 4), (3344, 3), (2048, 2), (900, 1), (100, 1)])
def test_most_epochs_pays_for_this_run_and_the_next(left, epochs):
    ctx = context(spent=6144 - left)
    assert ctx.left == left
    assert _final_stages._most_epochs(ctx) == epochs  # two runs of that many epochs fit, else one, at least 1


@pytest.mark.parametrize(("most", "spent", "fixed", "one"), [
    (2, 3144, {}, True),  # 2 epochs < 3 of 4, and 3000 left pays one full run
    (3, 3144, {}, False),  # three quarters of the task's epochs: two runs go ahead
    (2, 4144, {}, False),  # 2000 left cannot pay one full run either
    (2, 3144, {"lr_scheduler_type": "constant"}, False),  # no decaying run to give it to
])
def test_one_run_replaces_two_only_when_both_would_be_cut(most, spent, fixed, one):
    assert _final_stages._one_run(context(spent=spent, fixed=fixed), most) is one


def test_search_plan_places_the_candidates_in_the_interval_at_each_batch():
    values = {"lr_found": 0.01, "lr_low": 0.001, "lr_edge": 0.05, "lr_confidence": 0.9, "rule": "linear",
              "splits": [[32, 1], [64, 2]]}
    plan = _stages._search_plan(context(spent=0, values=values, optimizer="sgd"))
    assert plan is not None
    at_32 = sorted(c.lr for c in plan.candidates if c.batch == 32)
    at_128 = sorted(c.lr for c in plan.candidates if c.batch == 128)
    # five half a decade apart, slid down once so that none is above the edge 0.05
    assert at_32 == pytest.approx([10**-3.5, 1e-3, 10**-2.5, 1e-2, 10**-1.5])
    # three at batch 128: the LR scaled linearly (×4) to 0.04, all under the edge scaled the same way (0.2)
    assert at_128 == pytest.approx([0.04 / 10**0.5, 0.04, 0.04 * 10**0.5])
    assert [c.batch for c in plan.candidates][:4] == [32, 128, 32, 128]  # the batches interleaved
    assert all(c.warmup_ratio == 0 for c in plan.candidates if c.batch == 32)
    assert [c.warmup_ratio for c in plan.candidates if c.batch == 128 and c.lr == pytest.approx(0.04)] == \
        pytest.approx([0.011 * 2])  # 4× the range test's LR: warm up 2.2% of the run
    assert plan.rungs[1] == 3 * plan.rungs[0] and plan.cooldown == 0.2
    assert [c.accumulation for c in plan.candidates if c.batch == 128] == [2, 2, 2]


def test_search_plan_unsure_range_test_centres_the_runs_in_the_interval():
    values = {"lr_found": 1e-3, "lr_low": 1e-4, "lr_edge": 0.1, "lr_confidence": 0.2, "rule": "sqrt",
              "splits": [[32, 1]]}
    plan = _stages._search_plan(context(spent=0, values=values))
    assert plan is not None
    assert max(plan.candidates, key=lambda c: -abs(math.log10(c.lr / 0.01))).lr == pytest.approx(0.01)  # √(1e-3·0.1)


def test_no_search_plan_when_the_budget_cannot_pay_the_first_rung():
    values = {"lr_found": 1e-3, "lr_low": 1e-4, "lr_edge": 1e-2, "lr_confidence": 0.9, "rule": "sqrt",
              "splits": [[32, 1]]}
    assert _stages._search_plan(context(spent=4000, budget_runs=2.0, values=values)) is None
    assert _stages._search_plan(context(spent=0, values=values, fixed={"learning_rate": 0.1})) is None


def scored_study(direction: str, scores: dict[int, dict[int, float]]) -> optuna.Study:
    """A study whose trial ``i`` (lr = 10^-i) is still running with the given scores per rung."""
    study = optuna.create_study(direction=direction,
                                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=100, reduction_factor=3))
    for i, rungs in scores.items():
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING, params={"lr": 10.0**-i, "micro_batch": 32, "accumulation": 1},
            distributions=_search._DISTRIBUTIONS, intermediate_values=rungs, user_attrs={"index": i}))
    return study


class _Searcher(_search.Search):
    def __init__(self, folder: Path, higher: bool) -> None:  # only what _halve reads
        self.folder, self.task = folder, small_task()
        object.__setattr__(self.task, "higher_is_better", higher)


@pytest.mark.parametrize("higher", [True, False])
def test_halve_promotes_the_best_third_and_deletes_the_pruned_runs(tmp_path, higher):
    scores = {0: 0.5, 1: 0.9, 2: 0.7, 3: 0.2, 4: 0.8, 5: 0.4}
    study = scored_study("maximize" if higher else "minimize", {i: {100: v} for i, v in scores.items()})
    for t in study.trials:
        (tmp_path / f"trial-{t.number}.pt").write_bytes(b"run")
    plan = SearchPlan(tuple(Candidate(10.0**-i, 32) for i in scores), (100, 300), 0.2)
    promoted = _Searcher(tmp_path, higher)._halve(study, plan, 0)
    assert promoted == ([1, 4] if higher else [3, 5])  # 6 candidates: the best 2 go on, best first
    again = _Searcher(tmp_path, higher)._halve(study, plan, 0)  # a worker killed after halving does it again
    assert again == promoted
    pruned = [t.number for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert sorted(pruned) == sorted(set(scores) - set(promoted))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"trial-{i}.pt" for i in sorted(promoted)]


@pytest.mark.parametrize(("scores", "higher", "going"), [
    ([0.5, 0.9, 0.7, 0.2, 0.8, 0.4], True, [1, 4]),  # a third of six
    ([0.5, 0.9, 0.7, 0.2, 0.8, 0.4], False, [3, 5]),
    ([0.3, 0.1, 0.2, 0.6, 0.5], True, [3]),  # a third of five, rounded down
    ([0.3, 0.1], False, [1]),  # at least one
    ([float("nan"), 0.1, 0.2], True, [2]),
    ([float("nan"), float("nan")], True, []),  # a run that diverged never goes on
    ([0.1] * 9, True, [0, 1, 2]),
])
def test_promote_the_best_third(scores, higher, going):
    assert _search.promote(scores, higher_is_better=higher) == going


def test_survivors_per_rung():
    assert [_search.survivors(8, k) for k in range(3)] == [8, 2, 1]
    assert [_search.survivors(5, k) for k in range(3)] == [5, 1, 1]


def test_best_candidate_is_the_best_at_the_longest_rung_reached():
    scores = {0: {100: 0.6, 300: 0.80}, 1: {100: 0.95}, 2: {100: 0.7, 300: 0.85}, 3: {100: 0.5, 300: float("nan")}}
    best, score, rung = _search.best_candidate(scored_study("maximize", scores), higher_is_better=True)
    assert (best.lr, score, rung) == (pytest.approx(1e-2), 0.85, 300)  # trial 1's 0.95 came at a shorter rung
    best, score, rung = _search.best_candidate(scored_study("minimize", scores), higher_is_better=False)
    assert (best.lr, score, rung) == (pytest.approx(1.0), 0.80, 300)  # the NaN never wins
    with pytest.raises(ValueError, match="no trial reached its first rung"):
        _search.best_candidate(scored_study("maximize", {0: {}}), higher_is_better=True)
