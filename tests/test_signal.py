"""diagnosis.signal: the small helpers for noisy curves."""

import math

import numpy as np
import pytest

from gradpilot.diagnosis.signal import median


@pytest.mark.parametrize("values, expected", [([3.0, 1.0, 2.0], 2.0), ([4.0, 1.0, 3.0, 2.0], 2.5), ([-1.5], -1.5)])
def test_the_median_is_the_middle_value_or_the_mean_of_the_two_middle_ones(values, expected):
    assert median(np.array(values)) == expected == np.median(values)


def test_the_median_of_nothing_or_of_a_nan_is_nan_as_numpy_says():
    assert math.isnan(median(np.array([]))) and math.isnan(median(np.array([1.0, math.nan, 2.0])))
    assert median(np.array([[1.0, 5.0], [2.0, 9.0]])) == 3.5  # every value, whatever the shape
