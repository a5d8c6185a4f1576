"""_run_shape: what the detectors measure in a run's curves."""

import numpy as np
import pytest

from gradpilot.diagnosis._run_shape import point_noise, rows_are_epochs, swing
from gradpilot.diagnosis.history import History, Series


def test_swing_is_scatter_against_the_trend_s_movement():
    assert swing(np.array([0.1, 0.4, 0.6, 0.8, 0.9])) < 0.2  # rose
    assert swing(np.array([0.5, 0.8, 0.9, 0.85, 0.7, 0.6])) < 0.5  # rose, then fell: overfitting's shape
    assert swing(np.array([0.2, 1.0, 0.2, 1.0, 0.2, 1.0])) > 2  # up and down, going nowhere
    assert swing(np.array([0.2, 1.0, 0.2, 1.0])) == 0.0  # too few evaluations to tell
    rng = np.random.default_rng(0)
    improving = np.linspace(0.23, 0.36, 70) + 0.005 * rng.standard_normal(70)  # a ROUGE over 70 evaluations
    assert swing(improving) < 0.2
    assert swing(np.r_[0.2, np.nan, 1.0, 0.2, 1.0, 0.2]) == swing(np.array([0.2, 1.0, 0.2, 1.0, 0.2]))


def test_point_noise_measures_scatter_not_trend():
    rng = np.random.default_rng(1)
    y = np.linspace(0, 10, 400) + 0.1 * rng.standard_normal(400)
    assert point_noise(y) == pytest.approx(0.1, rel=0.15)
    assert point_noise(np.array([1.0, 2.0])) == 0.0


def test_rows_are_epochs_when_each_row_holds_the_training_and_validation_loss():
    steps = np.arange(0.0, 10)
    per_epoch = History(Series(steps, np.ones(10)), val_loss=Series(steps, np.ones(10)))
    assert rows_are_epochs(per_epoch)
    per_step = History(Series(np.arange(1.0, 101), np.ones(100)), val_loss=Series(np.arange(10.0, 101, 10), np.ones(10)))
    assert not rows_are_epochs(per_step)
