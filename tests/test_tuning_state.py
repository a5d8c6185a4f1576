"""Stage records: every decision comes back from its JSON as the same typed value."""

from __future__ import annotations

import json

import pytest

from gradpilot.schedules.factor import Wsd
from gradpilot.train.seam import Cost
from gradpilot.tuning.state import Batches, Chosen, Clock, Decided, RangeTest, Splits, Stage, Trained


@pytest.mark.parametrize("decision", [
    Clock(1e-3, 0.1, 2048, 4, 0.3), RangeTest(1e-3, 1e-4, 1e-2, 0.8), Batches((32, 64), 64, "sqrt"),
    Splits(((32, 1), (32, 2))), Chosen(3e-3, 32, 2, 5, 7, (1, 3, 4)),
    Trained(3, Wsd(5, 40, 10, 0.0, "linear"), 0.91, "best.pt", "host:1"),
    Trained(3, Wsd(0, 0, 48, 0.01, "cosine"), 0.9, "best.pt", "", "cosine_with_min_lr", {"min_lr": 1e-5}), None,
])
def test_a_stage_comes_back_from_its_json_as_it_was(decision):
    stage = Stage("x", decision, "why", [{"a": 1}], {"e": [1.0]}, Cost(100, 1.5, 0.25, 0.125, 0.5), "budget")
    again = Stage.from_json(json.loads(json.dumps(stage.to_json())))
    assert again == stage and again.seconds == pytest.approx(2.375) and again.spent.work == pytest.approx(1.875)


def test_a_trained_schedule_in_training_arguments_names():
    wsd = Trained(3, Wsd(5, 40, 10, 0.0, "linear"), 0.9, "best.pt").training_arguments()
    assert wsd == {"lr_scheduler_type": "warmup_stable_decay", "warmup_steps": 5,
                   "lr_scheduler_kwargs": {"num_decay_steps": 10, "decay_type": "linear", "min_lr_ratio": 0.0}}
    assert Trained(3, Wsd(4), 0.9, "b").training_arguments()["lr_scheduler_type"] == "constant_with_warmup"
    assert Trained(3, Wsd(), 0.9, "b").training_arguments()["lr_scheduler_type"] == "constant"


def test_decided_holds_each_stage_s_decision_by_its_name():
    decided = Decided()
    decided.take(Stage("lr_range", RangeTest(1e-3, 1e-4, 1e-2, 0.8), "why"))
    assert decided.need("lr_range").lr_found == 1e-3
    with pytest.raises(AssertionError, match="'batch' has not decided yet"):
        decided.need("batch")
