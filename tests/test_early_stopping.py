"""Early stopping as a pure rule over a metric's history: each case with its answer worked out by hand."""

import math

import pytest

from gradpilot import EarlyStopping, GradpilotError

NAN = float("nan")


@pytest.mark.parametrize(("history", "mode", "best"), [
    ([3.0, 2.0, 1.0], "min", 2),
    ([3.0, 2.0, 1.0], "max", 0),
    ([NAN, 2.0, 3.0], "min", 1),  # NaN never wins
    ([NAN, NAN], "min", None),
    ([], "min", None),
    ([1.0, 1.0, 1.0], "min", 0),  # a tie is no improvement: the first stays best
    ([math.inf, 5.0], "min", 1),  # inf is not a finite best
])
def test_best_epoch(history, mode, best):
    assert EarlyStopping().best_epoch(history, mode) == best


def test_min_delta_counts_only_improvements_larger_than_it():
    rule = EarlyStopping(min_delta=0.1)
    assert rule.best_epoch([1.0, 0.95, 0.9]) == 0  # 0.05 steps: not larger than 0.1
    assert rule.best_epoch([1.0, 0.85]) == 1  # 0.15: larger
    assert rule.best_epoch([1.0, 0.9]) == 0  # exactly 0.1 (give or take round-off): not larger
    assert EarlyStopping(min_delta=0.1).best_epoch([0.0, 0.1, 0.25], "max") == 2  # 0.25 beats 0.0 by 0.25


@pytest.mark.parametrize(("history", "patience", "stop"), [
    ([3, 2, 1], 2, False),
    ([3, 2, 1, 1], 2, False),  # one epoch without improvement, patience 2
    ([3, 2, 1, 1, 1], 2, True),  # two
    ([1], 1, False),  # the first epoch is an improvement over nothing
    ([1, 2], 1, True),
    ([NAN], 1, True),  # nothing finite after one epoch: stop
    ([NAN], 2, False),
])
def test_should_stop(history, patience, stop):
    assert EarlyStopping(patience=patience).should_stop(history) is stop


def test_the_rule_s_own_mode_wins_over_the_metric_s_direction():
    rule = EarlyStopping(patience=1, mode="max")
    assert rule.best_epoch([1.0, 2.0], "min") == 1
    assert not rule.should_stop([1.0, 2.0], "min")
    assert EarlyStopping(patience=1).should_stop([1.0, 2.0], "min")
    assert not EarlyStopping(patience=1).should_stop([1.0, 2.0], "max")


@pytest.mark.parametrize(("bad", "message"), [
    ({"patience": 0}, "patience must be at least 1"), ({"min_delta": -1}, "min_delta must be non-negative"),
    ({"mode": "up"}, "mode must be 'min' or 'max'"),
])
def test_bad_arguments(bad, message):
    with pytest.raises(GradpilotError, match=message):
        EarlyStopping(**bad)


def test_defaults():
    rule = EarlyStopping()
    assert (rule.patience, rule.min_delta, rule.mode) == (3, 0.0, None)
    assert not rule.should_stop([1.0, 2.0, 2.0]) and rule.should_stop([1.0, 2.0, 2.0, 2.0])
