"""tune's budget policy on its own, with plain numbers: the trunk's branches, what the purse pays for, how the
search's first rung is sized so that the search and the trunk after it fit, the range test's length."""

from __future__ import annotations

import pytest

from gradpilot.tuning import budget
from gradpilot.tuning.budget import Purse, TrunkPlan
from gradpilot.tuning.state import Clock

# one run: 4 epochs of 512 items (2048 items, 64 steps of 32), 1 ms per item and 0.1 s per validation: 2.448 s
CLOCK = Clock(item_seconds=1e-3, validation_seconds=0.1, run_items=2048, validations=4, start_metric=0.3)


def test_a_run_costs_its_items_its_validations_and_its_calls():
    assert CLOCK.run_seconds == pytest.approx(2.048 + 0.4)
    assert CLOCK.seconds(1000, 2) == pytest.approx(1.2)
    trainer = Clock(item_seconds=1e-3, validation_seconds=0.1, run_items=2048, validations=4, start_metric=0.3, call_seconds=0.5)
    assert trainer.run_seconds == pytest.approx(2.448 + 0.5)  # a run is one call into the trainer
    assert trainer.seconds(1000, 2, 3) == pytest.approx(2.7)
    # the search's short runs and the trunk's stretches each cost a call to train and one to decay
    assert budget.search_cost(320, [32] * 5, 0.2).calls == 14
    assert budget.trunk_cost(TrunkPlan((1, 3, 4), 16), 0, 32) == (77 * 32, 3, 6)


def test_steps_per_epoch_count_as_the_trainer_counts_them():
    assert budget.steps_per_epoch(512, 32, 1) == 16
    assert budget.steps_per_epoch(500, 32, 1) == 16  # the last partial batch is a step
    assert budget.steps_per_epoch(500, 32, 3) == 6  # 16 micro-batches, a partial window at the end steps too


@pytest.mark.parametrize(("epochs", "branches"), [(1, (1,)), (2, (1, 2)), (3, (1, 2, 3)), (4, (1, 3, 4)),
                                                  (10, (3, 7, 10)), (30, (10, 20, 30))])
def test_branches_at_a_third_two_thirds_and_the_end(epochs, branches):
    assert budget.branch_epochs(epochs) == branches


def test_a_trunk_plan_s_branches_and_the_steps_it_trains():
    plan = TrunkPlan((1, 3, 4), steps_per_epoch=16)
    assert [plan.total(k) for k in range(3)] == [16, 48, 64]
    assert [plan.decay(k) for k in range(3)] == [3, 10, 13]  # a fifth of each branch's length, rounded
    assert [plan.start(k) for k in range(3)] == [13, 38, 51]
    # the trunk runs to 51, and the three decays are taken off it: 51 + 3 + 10 + 13
    assert plan.steps(0) == 77 and plan.steps(20) == 57
    assert plan.reachable(20).epochs == (3, 4)  # the branch at 13 is behind a trunk already at 20
    assert plan.reachable(60).epochs == (4,)  # the last branch always stays
    flat = TrunkPlan((2, 4), 16, decay_share=0.0)  # a constant LR: "branches" are validations, no decay
    assert flat.decay(1) == 0 and flat.start(1) == 64 and flat.steps(0) == 64


def test_the_purse_pays_in_both_units():
    purse = Purse(seconds=3.0, items=2048, clock=CLOCK)
    assert purse.pays(2048, 4)  # 2.448 s, 2048 items
    assert not purse.pays(2049, 0)  # one item over
    assert not purse.pays(1000, 25)  # 1 s + 2.5 s of validation
    left = purse.less(1000, 2)
    assert left.items == 1048 and left.seconds == pytest.approx(1.8)


def test_the_trunk_the_purse_pays_for():
    def purse(runs: float) -> Purse:
        return Purse(runs * CLOCK.run_seconds, runs * 2048, CLOCK)

    # three branches: 77 steps of 32 (2464 items) and 3 validations = 2.764 s
    assert budget.affordable_trunk(4, 16, 32, purse(1.25)).epochs == (1, 3, 4)  # 1.2 runs: 2457 items, too few
    assert budget.affordable_trunk(4, 16, 32, purse(1.2)).epochs == (4,)
    # the last branch alone: 64 steps (2048 items) and 1 validation = 2.148 s, under 1.0 run's 2.448 s
    assert budget.affordable_trunk(4, 16, 32, purse(1.0)).epochs == (4,)
    # fewer epochs than the task's where even that is too much: 3 epochs, 1536 items = 1.636 s (0.8 runs: 1638
    # items, 1.96 s); at 0.7 runs (1433 items) the items bind: 2 epochs
    assert budget.affordable_trunk(4, 16, 32, purse(0.8)).epochs == (3,)
    assert budget.affordable_trunk(4, 16, 32, purse(0.7)).epochs == (2,)
    assert budget.affordable_trunk(4, 16, 32, purse(0.01)).epochs == (1,)  # at least one


def test_successive_halving_s_rungs_and_survivors():
    assert [budget.survivors(8, k) for k in range(3)] == [8, 2, 1]
    assert [budget.survivors(5, k) for k in range(3)] == [5, 2, 1]  # a third of 5 is 1: two go on all the same
    assert [budget.survivors(27, k) for k in range(4)] == [27, 9, 3, 1]
    assert budget.rung_count(5) == 2 and budget.rung_count(3) == 2  # the better of the two is the trunk
    assert budget.rung_count(8) == 2 and budget.rung_count(27) == 3 and budget.rung_count(1) == 1


def test_the_search_s_cost_by_hand():
    five = budget.search_cost(320, [32] * 5, 0.2)
    # rung 0: 5 × (10 steps and 2 to cool down); rung 1 (960 items): 2 go on, each 20 steps more and 6 to cool down
    assert five == budget.SearchCost(items=5 * (320 + 64) + 2 * (20 + 6) * 32, evals=7, winner_items=960)
    eight = budget.search_cost(320, [32] * 5 + [64] * 3, 0.2)
    # rung 0: five of batch 32 (10 steps, 2 to cool down), three of 64 (5 steps, 1 to cool down); rung 1 (960
    # items): the two widest counted, each 10 steps more and 3 to cool down
    assert eight == budget.SearchCost(items=5 * 384 + 3 * 384 + 2 * (10 + 3) * 64, evals=10, winner_items=960)
    assert budget.cooldown_steps(10, 0.0) == 0 and budget.cooldown_steps(2, 0.2) == 1  # never under one step
    # one rung only (where a final between two does not fit): the best of the first rung is the trunk
    assert budget.search_cost(320, [32] * 5, 0.2, rungs=1) == budget.SearchCost(5 * 384, 5, 320)


def test_the_first_rung_is_the_longest_the_search_and_the_trunk_after_it_fit():
    trunk = TrunkPlan((1, 3, 4), steps_per_epoch=16)
    purse = Purse(2.0 * CLOCK.run_seconds, 2.0 * 2048, CLOCK)
    r0 = budget.rung0(purse, [32] * 5, 0.2, trunk, run_items=2048)
    assert r0 is not None and r0 % 32 == 0

    def total(r: int) -> tuple[int, int, int]:
        cost = budget.search_cost(r, [32] * 5, 0.2)
        at = cost.winner_items // 32
        items, evals, calls = budget.trunk_cost(trunk.reachable(at), at, 32)
        return cost.items + items, cost.evals + evals, cost.calls + calls

    assert purse.pays(*total(r0)) and not purse.pays(*total(r0 + 32))  # the longest that fits, to the batch
    assert 3 * r0 <= 0.5 * 2048  # the winner (at the second rung) trains half a run at most in the search
    assert budget.rung0(Purse(1e9, 1e9, CLOCK), [32] * 5, 0.2, trunk, run_items=2048) == 320  # that cap, in batches


def test_no_search_where_the_shortest_rung_does_not_fit():
    trunk = TrunkPlan((4,), steps_per_epoch=16)
    tight = Purse(1.05 * CLOCK.run_seconds, 1.05 * 2048, CLOCK)
    assert budget.rung0(tight, [32] * 5, 0.2, trunk, run_items=2048) is None
    # a final between two costs more than one rung: where it does not fit, one rung may. By hand, at the least
    # rung (4 steps): two rungs of three are 2784 items and 6 validations (3.38 s), one rung 2400 and 4 (2.8 s)
    some = Purse(3.0, 3000, CLOCK)
    assert budget.rung0(some, [32] * 3, 0.2, trunk, run_items=2048) is None
    assert budget.rung0(some, [32] * 3, 0.2, trunk, run_items=2048, rungs=1) is not None
    assert budget.least_rung(32, 2048) == 128  # 4 steps (2% of the run is less)
    assert budget.least_rung(32, 100_000) == 2016  # 2% of the run, in whole batches


def test_a_search_that_cannot_hand_its_winner_on_pays_for_a_whole_run_after_it():
    trunk = TrunkPlan((4,), steps_per_epoch=16)
    purse = Purse(2.0 * CLOCK.run_seconds, 2.0 * 2048, CLOCK)
    going_on = budget.rung0(purse, [32] * 5, 0.2, trunk, run_items=2048)
    fresh = budget.rung0(purse, [32] * 5, 0.2, trunk, run_items=2048, reuse=False)
    assert going_on is not None and fresh is not None and fresh < going_on


@pytest.mark.parametrize(("seconds", "steps"), [
    (100.0, 30),  # a tenth of a 64-step run is 6, under the usual least of 30
    (5.0, 23),  # 15% of 5 s pays for 23 steps of 0.032 s
    (0.1, 10),  # never under 10: a curve needs that many points
])
def test_the_range_test_is_a_tenth_of_the_run_within_a_share_of_the_budget(seconds, steps):
    assert budget.range_steps(2048, 32, seconds, step_seconds=0.032) == steps
    assert budget.range_steps(200_000, 32, 1e6, step_seconds=0.032) == 100  # a tenth of 6250 steps, at most 100
    # a short task's full run set aside: 0.5 s of room pays for 15 steps, not the 23 a share of 5 s would
    assert budget.range_steps(2048, 32, 5.0, step_seconds=0.032, room=0.5) == 15
    assert budget.range_steps(2048, 32, 5.0, step_seconds=0.032, room=-1.0) == budget.MIN_RANGE_STEPS


def test_the_candidates_tried_as_the_budget_shrinks():
    assert budget.search_candidates([5, 3]) == [8, 5, 3]
    assert budget.search_candidates([5]) == [5, 3]
