import numpy as np
import pytest

from gradpilot import GradpilotError
from gradpilot.suggest import DEFAULT_RULE, RULES, Curve, descent_edge, get_rule, minimum_div10, steepest, valley

LRS = np.logspace(-7, 1, 100)


def ema(y, beta=0.98):
    out, avg = np.empty(len(y)), 0.0
    for i, v in enumerate(y):
        avg = beta * avg + (1 - beta) * v
        out[i] = avg / (1 - beta ** (i + 1))
    return out


def shaped(noise=0.02, seed=0, family="adaptive", descent=(-4.0, -2.0), edge=-1.0):
    """Plateau at 2.0, a descent to 0.5 between 10**descent[0] and 10**descent[1], flat, then a blow-up."""
    x = np.log10(LRS)
    y = np.interp(x, descent, [2.0, 0.5]) + np.where(x > edge, 10 ** (2 * (x - edge)) - 1, 0.0)
    y = y + np.random.default_rng(seed).normal(0, noise, len(x))
    return Curve(LRS, y, ema(y), family)


def test_descent_edge_for_adaptive_optimizers_is_mid_descent():
    # middle of the descent in log space: sqrt(1e-4 * 1e-2) = 1e-3
    for seed in range(5):
        assert 3e-4 < descent_edge(shaped(seed=seed)) < 3e-3


def test_descent_edge_for_sgd_is_below_the_edge_of_stability_not_in_the_descent():
    # the blow-up starts at 1e-1; the smoothed curve leaves the noise band a little before it
    for seed in range(5):
        assert 1e-2 < descent_edge(shaped(seed=seed, family="sgd")) < 1e-1


def test_descent_edge_without_a_clear_descent_backs_off_from_the_edge():
    flat = shaped(noise=0.2, descent=(-4.0, -2.0))
    flat = Curve(flat.lrs, np.where(np.log10(LRS) > -1, flat.losses, 1.0 + flat.losses - np.interp(np.log10(LRS), (-4, -2), (2.0, 0.5))), flat.smoothed)
    pick = descent_edge(flat)
    assert 5e-3 < pick < 5e-2  # a fifth of the edge near 1e-1


def test_descent_edge_is_not_fooled_by_an_early_noise_dip():
    curve = shaped(seed=1)
    dip = curve.losses.copy()
    dip[8:11] -= 1.8  # a few wild low points on the plateau
    noisy = Curve(LRS, dip, ema(dip), "adaptive")
    assert 3e-4 < descent_edge(noisy) < 3e-3


def test_descent_edge_ignores_loss_scale_and_offset():
    curve = shaped(seed=2)
    scaled = Curve(LRS, curve.losses * 1000 + 7, curve.smoothed * 1000 + 7, "adaptive")
    assert descent_edge(scaled) == pytest.approx(descent_edge(curve))


def test_descent_edge_handles_short_curves():
    lrs = np.logspace(-5, 0, 10)
    y = np.linspace(2, 1, 10)
    assert lrs[0] <= descent_edge(Curve(lrs, y, y)) <= lrs[-1]


def test_classic_rules_on_an_exact_curve():
    x = np.log10(LRS)
    y = 1.0 - np.tanh(2 * (x + 3))  # steepest at 1e-3, lowest at the far end
    curve = Curve(LRS, y, y)
    assert steepest(curve) == pytest.approx(1e-3, rel=0.25)
    assert minimum_div10(curve) == pytest.approx(LRS[94] / 10)  # the last point the trim keeps
    assert 1e-3 < valley(curve) < 1e-1


def test_every_rule_returns_a_swept_lr_and_the_default_is_registered():
    curve = shaped(seed=3)
    for rule in RULES.values():
        assert LRS[0] <= rule(curve) <= LRS[-1]
    assert DEFAULT_RULE in RULES


def test_unknown_rule_names_list_the_choices():
    with pytest.raises(GradpilotError, match=r"unknown suggestion rule 'magic'.*descent-edge"):
        get_rule("magic")
