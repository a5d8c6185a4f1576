"""Small pure helpers for noisy curves. NumPy only."""

from __future__ import annotations

import math

import numpy as np


def centred_smooth(y: np.ndarray, width: float) -> np.ndarray:
    """Gaussian smoothing over neighbouring points: unlike a moving average it does not lag to the right."""
    half = math.ceil(3 * width)
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / width) ** 2)
    window = slice(half, half + len(y))  # the centred part of the full convolution, whatever the lengths
    smooth: np.ndarray = _convolve(y, kernel)[window] / _convolve(np.ones(len(y)), kernel)[window]
    return smooth


def _convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Full convolution; through the FFT once the kernel is long (long runs would make it quadratic)."""
    if len(b) <= 64:
        return np.convolve(a, b)
    size = len(a) + len(b) - 1
    n = 1 << (size - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(a, n) * np.fft.rfft(b, n), n)[:size]


def robust_noise(y: np.ndarray, smooth: np.ndarray) -> float:
    """Standard deviation of ``y`` around ``smooth``, from the median absolute deviation (spikes ignored)."""
    return 1.4826 * float(np.median(np.abs(y - smooth))) if len(y) else 0.0
