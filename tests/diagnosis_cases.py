"""Synthetic runs covering every detector and the guards against false alarms, each with the answer a person
reading its curves would give (``INTENDED``: the kinds found and the LR verdict), for test_diagnosis.py."""

from __future__ import annotations

import numpy as np

from gradpilot.diagnosis.history import History, Series

# name -> (kinds, verdict). A flat loss, a swinging validation score or a loss still falling a little say only
# "unknown" about the LR: one log cannot tell those apart from a resumed run, a small validation set or a
# normal decay.
INTENDED: dict[str, tuple[set[str], str]] = {
    "healthy decay": ({"healthy"}, "about right"),
    "healthy, no lr column": ({"healthy"}, "unknown"),
    "healthy, cosine lr": ({"healthy"}, "about right"),
    "flat from the start (plateau)": ({"plateau"}, "unknown"),
    "early jump, then flat (lr broke it)": ({"plateau"}, "too high"),
    "divergence after a low": ({"divergence"}, "too high"),
    "ends above its start": ({"divergence"}, "too high"),
    "nan at the end": ({"nan"}, "too high"),
    "inf once, recovered": ({"healthy"}, "about right"),
    "big spikes (oscillation)": ({"oscillation"}, "too high"),
    "early overshoot to 12x (oscillation)": ({"oscillation"}, "too high"),
    "noisy floor at a constant lr (slow convergence)": ({"slow_convergence"}, "about right"),
    "overfitting with epochs": ({"overfitting"}, "about right"),
    "overfitting, no epochs": ({"overfitting"}, "about right"),
    "val rises and train gave back half its fall (divergence, not overfitting)": ({"divergence"}, "too high"),
    "val up 10% after its best at the 5th of 6 evaluations": ({"healthy"}, "about right"),
    "underfitting, val still falling": ({"underfitting"}, "about right"),
    "underfitting at a low lr": ({"underfitting"}, "unknown"),
    "underfitting, no epochs": ({"underfitting"}, "about right"),
    "validation swings between evaluations (oscillation)": ({"oscillation"}, "unknown"),
    "validation falls, then rises a little and falls again": ({"healthy"}, "about right"),
    "two points": ({"insufficient_data"}, "unknown"),
    "nine points, still falling fast": ({"underfitting"}, "unknown"),
    "short and noisy": ({"plateau"}, "unknown"),
    "negative losses (not a descent)": ({"healthy"}, "unknown"),
}


def _run(loss, *, lr=1e-3, val=None, val_every=None, epochs=None, lr_curve=None):
    n = len(loss)
    steps = np.arange(1, n + 1, dtype=float)
    lr_series = None
    if lr_curve is not None:
        lr_series = Series(steps, np.asarray(lr_curve, float))
    elif lr is not None:
        lr_series = Series(steps, np.full(n, lr))
    val_series = val_epochs = None
    if val is not None:
        at = np.arange(1, len(val) + 1, dtype=float) * (val_every or n // len(val))
        val_series = Series(at, np.asarray(val, float))
        val_epochs = None if epochs is None else np.asarray(epochs, float)
    return History(Series(steps, np.asarray(loss, float)), val_loss=val_series, lr=lr_series, val_epochs=val_epochs)


def cases() -> dict[str, History]:
    rng = np.random.default_rng(7)
    t = np.arange(600)
    decay = 0.3 + 2.0 * np.exp(-t / 80)
    noisy = decay * (1 + 0.1 * rng.standard_normal(600))
    out: dict[str, History] = {
        "healthy decay": _run(noisy),
        "healthy, no lr column": _run(noisy, lr=None),
        "healthy, cosine lr": _run(noisy, lr_curve=1e-3 * (1 + np.cos(np.pi * t / 600)) / 2),
        "flat from the start (plateau)": _run(2.3 + 0.01 * rng.standard_normal(600)),
        "early jump, then flat (lr broke it)": _run(np.r_[2.3, 2.3, 9.0, 6.0, np.full(596, 2.29)]),
        "divergence after a low": _run(np.r_[decay[:300], decay[299] * np.exp(np.arange(300) / 60)]),
        "ends above its start": _run(np.r_[decay[:100], np.linspace(decay[99], 3.5, 500)]),
        "nan at the end": _run(np.r_[noisy[:500], np.full(100, np.nan)]),
        "inf once, recovered": _run(np.r_[np.inf, noisy[1:]]),
        "big spikes (oscillation)": _run(np.where(t % 40 == 5, noisy * 8, noisy)),
        "early overshoot to 12x (oscillation)": _run(np.r_[decay[:5] * np.array([1, 1, 1, 12, 9]), noisy[5:]]),
        "noisy floor at a constant lr (slow convergence)": _run(
            0.3 + 2.0 * np.exp(-t / 30) + 0.25 * np.abs(rng.standard_normal(600))),
        "overfitting with epochs": _run(noisy, val=[1.0, 0.6, 0.5, 0.55, 0.7, 0.8], epochs=[1, 2, 3, 4, 5, 6]),
        "overfitting, no epochs": _run(noisy, val=[1.0, 0.6, 0.5, 0.55, 0.7, 0.8]),
        "val rises and train gave back half its fall (divergence, not overfitting)": _run(
            np.r_[decay[:300], np.linspace(decay[299], 1.4, 300)], val=[1.0, 0.6, 0.5, 0.55, 0.7, 0.8]),
        "val up 10% after its best at the 5th of 6 evaluations": _run(noisy, val=[1.0, 0.8, 0.7, 0.6, 0.5, 0.55]),
        "underfitting, val still falling": _run(noisy, val=[1.0, 0.9, 0.8, 0.7, 0.6, 0.5], epochs=[1, 2, 3, 4, 5, 6]),
        "underfitting at a low lr": _run(2.0 - 0.002 * t, val=[1.9, 1.7, 1.5, 1.3, 1.1, 0.9]),
        "underfitting, no epochs": _run(noisy, val=[1.0, 0.9, 0.8, 0.7, 0.6, 0.5]),
        "validation swings between evaluations (oscillation)": _run(
            noisy, val=[1.0, 0.6, 0.9, 0.55, 0.95, 0.6, 0.85, 0.6]),
        "validation falls, then rises a little and falls again": _run(noisy, val=[1.0, 0.6, 0.5, 0.6, 0.55, 0.7]),
        "two points": _run([2.3, 2.2]),
        "nine points, still falling fast": _run(2.0 * 0.9 ** np.arange(9)),
        "short and noisy": _run(1.0 + 0.3 * rng.standard_normal(30)),
        "negative losses (not a descent)": _run(-1.0 - np.log1p(t) + 0.05 * rng.standard_normal(600)),
    }
    return out
