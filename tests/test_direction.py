"""_direction: which way a metric is better, by name and between scores."""

import math

import pytest

from gradpilot._direction import better, lower_is_better, sort_key, words, worst


def test_better_follows_the_direction_and_the_margin():
    assert better(0.9, 0.8, higher_is_better=True) and not better(0.8, 0.9, higher_is_better=True)
    assert better(0.1, 0.2, higher_is_better=False) and not better(0.2, 0.1, higher_is_better=False)
    assert not better(0.5, 0.5, higher_is_better=True) and not better(0.5, 0.5, higher_is_better=False)
    assert not better(0.85, 0.8, higher_is_better=True, margin=0.1)  # within the margin: no better
    assert better(0.95, 0.8, higher_is_better=True, margin=0.1)
    assert not better(0.75, 0.8, higher_is_better=False, margin=0.1)
    assert better(0.65, 0.8, higher_is_better=False, margin=0.1)


@pytest.mark.parametrize("higher", [True, False])
def test_a_nan_never_wins_and_always_loses(higher):
    assert not better(math.nan, 1.0, higher_is_better=higher)
    assert better(1.0, math.nan, higher_is_better=higher)
    assert not better(math.nan, math.nan, higher_is_better=higher)


def test_worst_is_beaten_by_every_score():
    for higher in (True, False):
        assert all(better(s, worst(higher), higher_is_better=higher) for s in (-1e300, 0.0, 1e300))


def test_sort_key_puts_the_best_first_and_nan_last():
    scores = [0.3, math.nan, 0.9, 0.1]
    assert sorted(scores, key=sort_key(True))[:3] == [0.9, 0.3, 0.1]
    assert sorted(scores, key=sort_key(False))[:3] == [0.1, 0.3, 0.9]
    assert math.isnan(sorted(scores, key=sort_key(True))[-1]) and math.isnan(sorted(scores, key=sort_key(False))[-1])


@pytest.mark.parametrize(("name", "lower"), [
    ("val_loss", True), ("eval/wer", True), ("val_rmse", True), ("perplexity", True), ("val_top1_error", True),
    ("val_accuracy", False), ("eval_f1", False), ("rouge1", False), ("val_mAP50", False),
])
def test_lower_is_better_reads_the_name(name, lower):
    assert lower_is_better(name) is lower
    assert lower_is_better(words(name)) is lower


def test_words_split_a_column_name():
    assert words("train/loss") == ["train", "loss"]
    assert words("lr-AdamW/pg1") == ["lr", "adamw", "pg1"]
