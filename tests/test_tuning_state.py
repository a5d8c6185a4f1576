"""Stage records: every decision and every piece of evidence comes back from its JSON as the same typed value,
and tune.json (``TuneRecord``) reads back into the very record written."""

from __future__ import annotations

import json
import math

import pytest

from gradpilot.batch.results import BatchTrial
from gradpilot.schedules.factor import Wsd
from gradpilot.train.seam import Cost
from gradpilot.tuning.state import (
    Assumed,
    Batches,
    BatchSeen,
    BranchRecord,
    Chosen,
    Clock,
    ClockSeen,
    CurveSeen,
    Decided,
    RangeTest,
    SearchSeen,
    Splits,
    SplitsSeen,
    Stage,
    Trained,
    TrialRecord,
    TrunkSeen,
    TuneRecord,
)

DECISIONS = [
    Clock(1e-3, 0.1, 2048, 4, 0.3), RangeTest(1e-3, 1e-4, 1e-2, 0.8), Batches((32, 64), 64, "sqrt"),
    Splits(((32, 1), (32, 2))), Chosen(3e-3, 32, 2, 5, 7, (1, 3, 4)),
    Trained(3, Wsd(5, 40, 10, 0.0, "linear"), 0.91, "host:1"),
    Trained(3, Wsd(0, 0, 48, 0.01, "cosine"), 0.9, "", "cosine_with_min_lr", {"min_lr": 1e-5}), None,
]
EVIDENCE = [
    ClockSeen(1.5, 3.0, 2.0), CurveSeen((1e-4, 1e-3), (2.0, 1.5), (2.0, 1.7), 0.6, "reached end_lr", {"valley": 1e-3}),
    BatchSeen(None, "too noisy", 64, "", (BatchTrial(32, True, 1e4, None), BatchTrial(64, False, None, None, "OOM"))),
    SplitsSeen(("fits",)),
    SearchSeen((128, 384), 0.2, 0.9, 10_000, 3.5, (TrialRecord(0, 1e-3, 32, "complete", {"128": 0.8}, 300, 1.0),)),
    TrunkSeen((BranchRecord(2, 40, 10, 50, 0.9, 0.3, Wsd(0, 40, 10), True),), 0, (0.1, 0.05), 4, (0.1,), 12, 99),
    None,
]


@pytest.mark.parametrize("decision", DECISIONS)
@pytest.mark.parametrize("evidence", [EVIDENCE[0], EVIDENCE[-1]])
def test_a_stage_comes_back_from_its_json_as_it_was(decision, evidence):
    stage = Stage("x", decision, "why", evidence, Cost(100, 1.5, 0.25, 0.125, 0.5), "budget")
    again = Stage.from_json(json.loads(json.dumps(stage.to_json())))
    assert again == stage and again.seconds == pytest.approx(2.375) and again.spent.work == pytest.approx(1.875)


@pytest.mark.parametrize("evidence", EVIDENCE)
def test_every_kind_of_evidence_comes_back_typed(evidence):
    stage = Stage("x", None, "why", evidence)
    assert Stage.from_json(json.loads(json.dumps(stage.to_json()))) == stage


def test_tune_json_reads_back_into_the_record_written(tmp_path):
    from gradpilot.tuning.folder import TuneFolder

    stages = tuple(Stage(f"s{i}", d, "why", e) for i, (d, e) in enumerate(zip(DECISIONS, EVIDENCE, strict=False)))
    record = TuneRecord({"task": "t", "epochs": 4}, "abc", stages, Cost(10, 1.0), 1.2, 0.9, 2.0, 6.0, 3.0, 1234, 7.5,
                        8.25, {"learning_rate": 0.01}, {"learning_rate": "why"}, Assumed(512, 1, 16, 4), math.nan)
    record.write(TuneFolder(tmp_path))
    again = TuneRecord.read(tmp_path / "tune.json")
    assert again.stages == record.stages and again.assumed == record.assumed and math.isnan(again.metric)
    assert again.plan == record.plan and again.spent == record.spent and again.wall_seconds == 7.5
    assert again.process_seconds == 8.25
    assert json.loads((tmp_path / "tune.json").read_text())["assumed"]["total_steps"] == 64  # said for readers


def test_a_trained_schedule_in_training_arguments_names():
    wsd = Trained(3, Wsd(5, 40, 10, 0.0, "linear"), 0.9).training_arguments()
    assert wsd == {"lr_scheduler_type": "warmup_stable_decay", "warmup_steps": 5,
                   "lr_scheduler_kwargs": {"num_decay_steps": 10, "decay_type": "linear", "min_lr_ratio": 0.0}}
    assert Trained(3, Wsd(4), 0.9).training_arguments()["lr_scheduler_type"] == "constant_with_warmup"
    assert Trained(3, Wsd(), 0.9).training_arguments()["lr_scheduler_type"] == "constant"


def test_decided_holds_each_stage_s_decision_by_its_name():
    decided = Decided().taking(Stage("lr_range", RangeTest(1e-3, 1e-4, 1e-2, 0.8), "why"))
    assert decided.need("lr_range").suggestion == 1e-3
    with pytest.raises(AssertionError, match="'batch' has not decided yet"):
        decided.need("batch")
