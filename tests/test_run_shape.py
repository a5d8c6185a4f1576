"""_run_shape: what the detectors measure in a run's curves."""

import numpy as np
import pytest

from gradpilot._run_shape import swing


def test_swing_counts_reversals_beyond_one_rise_and_fall():
    assert swing(np.array([0.1, 0.4, 0.6, 0.8, 0.9])) == 0.0  # rose
    assert swing(np.array([0.5, 0.8, 0.9, 0.85, 0.7, 0.6])) == 0.0  # rose, then fell: overfitting's shape
    assert swing(np.array([0.2, 1.0, 0.2, 1.0, 1.0])) == pytest.approx(2.0)  # one fall and rise across the range
    assert swing(np.array([0.2, 1.0, 0.2, 1.0])) == 0.0  # too few evaluations to tell
    assert swing(np.array([0.2, np.nan, 1.0, 0.6, 1.0, 0.9])) == pytest.approx(1.0)  # non-finite points skipped
