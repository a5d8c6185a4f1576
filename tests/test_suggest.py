
import numpy as np
import pytest

from gradpilot import GradpilotError
from gradpilot.lr.suggest import (
    DEFAULT_RULE,
    RULES,
    Curve,
    Margins,
    descent_edge,
    get_rule,
    minimum_div10,
    momentum_of,
    read,
    safe_edge,
    steepest,
    valley,
)

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
    assert np.isclose(5 * pick, LRS, rtol=1e-12).any()  # exactly a fifth of a swept LR


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


# --- answers worked out by hand on noiseless curves ------------------------------------------------------------
GRID = np.logspace(-6, 0, 61)  # ten points a decade


def hand_curve(y, lrs=GRID, family="adaptive"):
    y = np.asarray(y, float)
    return Curve(lrs, y, y, family)  # smoothed = raw: what the rules read is exactly y


def test_minimum_div10_and_steepest_by_hand():
    y = np.full(61, 2.0)
    y[20:31] = 2.0 - 0.1 * np.arange(11)  # falls 0.1 a point from index 20 to 30 (the steepest stretch)
    y[31:41] = 1.0 - 0.05 * np.arange(1, 11)  # then 0.05 a point down to 0.5 at index 40
    y[41:] = 0.5 + 0.3 * np.arange(1, 21)  # then climbs
    c = hand_curve(y)
    assert minimum_div10(c) == pytest.approx(GRID[40] / 10, rel=1e-12)
    assert steepest(c) == pytest.approx(GRID[20], rel=1e-12)  # the first point of the steepest stretch


def test_steepest_is_per_unit_of_log_lr_on_an_uneven_grid():
    lrs = np.exp(np.cumsum(np.r_[0.0, np.full(15, 0.1), 1.0, np.full(15, 0.1)]))  # one wide gap at index 15-16
    y = np.linspace(2.0, 1.0, 32)
    y[16] = y[15] - 0.5  # a big drop, but over a wide gap: 0.5 per unit of log-LR
    y[17:] = y[17:] - 0.5
    y[10] = y[9] - 0.2  # a smaller drop over a narrow step: 2.0 per unit, the steepest
    y[11:] -= 0.2
    assert steepest(hand_curve(y, lrs)) == pytest.approx(lrs[9], rel=1e-12)


def test_valley_is_two_thirds_down_the_longest_decrease():
    y = np.full(61, 2.0)
    y[26:57] = 2.0 - 0.05 * np.arange(1, 32)  # strictly down from index 26 to 56 (after the trim: 20 to 50)
    y[57:] = 0.5
    # the run ends at trimmed index 50 with length 32 (the flat point before it counts): start 50 - 32 = 18,
    # thirds of 32: 10.67 → index 18 + 10 + 5 = 33 after the trim, 39 on the full grid
    assert valley(hand_curve(y)) == pytest.approx(GRID[39], rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_descent_edge_picks_are_the_grid_s_with_the_documented_arithmetic(seed):
    sgd = descent_edge(shaped(seed=seed, family="sgd"))
    assert np.isclose(2 * sgd, LRS, rtol=1e-12).any()  # half a swept LR: half the edge
    adaptive = descent_edge(shaped(seed=seed))
    steps = np.log(adaptive / LRS[0]) / np.log(LRS[1] / LRS[0])
    assert abs(2 * steps - round(2 * steps)) < 1e-6  # the geometric middle of two swept LRs


def random_curve(k):
    """Range-test curves of every shape the rules meet: lengths, noise, descents, edges and families vary."""
    rng = np.random.default_rng(1000 + k)
    n = int(rng.integers(40, 240))
    lrs = np.logspace(-7, 1, n)
    x = np.log10(lrs)
    a = rng.uniform(-6.5, -2.0)
    b = a + rng.uniform(0.3, 3.0)
    edge = b + rng.uniform(-0.5, 2.0)
    top, low = rng.uniform(1.0, 4.0), rng.uniform(0.05, 0.9)
    y = np.interp(x, (a, b), (top, low * top)) + np.where(x > edge, 10 ** (rng.uniform(1, 3) * (x - edge)) - 1, 0.0)
    y = y * (1 + rng.uniform(0.0, 0.3) * rng.standard_normal(n))
    return Curve(lrs, y, ema(y), "sgd" if k % 3 == 0 else "adaptive")


# Every rule's pick on 24 such curves, recorded when the rules were benchmarked (benchmarks/lr_suggestion.py):
# a change to any rule's arithmetic or constants shows here and has to be measured again.
GOLDEN: dict[str, list[float]] = {
    'safe-edge': [
        0.001423254188, 3.296817498e-05, 0.0002350007143, 0.0004023342853, 1.909632426e-05, 0.07771681569,
        0.0008050503262, 0.00621401276, 0.01, 6.725829779e-05, 0.01576667491, 0.0001414213562,
        0.02115538002, 6.526706786e-05, 0.01670821043, 0.001470164044, 0.000231883294, 0.1060287713,
        0.04159778976, 0.0003231721758, 7.342196487e-05, 1.821561784e-05, 0.1188823471, 0.05179474679,
    ],
    'descent-edge': [
        0.002873847212, 0.0001489965163, 0.0002092930066, 0.001060475444, 4.924184803e-05, 0.104961492,
        0.001088925513, 0.01508624013, 0.008111308308, 0.0003702842346, 0.002982471286, 0.0001650808371,
        0.05940682122, 0.0001743124886, 0.01246067019, 0.002932121246, 0.0002134721958, 0.1420830833,
        0.1414434717, 0.0002962771192, 0.0001345182448, 0.0004407329129, 0.08231764887, 0.1744850578,
    ],
    'valley': [
        0.0007048574036, 7.294805194e-06, 0.0002638661302, 0.0001526417967, 7.405684692e-06, 0.05754399373,
        0.0005951793946, 0.002559547923, 0.01232846739, 1.221677349e-05, 0.08334968345, 0.0001211527659,
        0.007533648401, 2.443766469e-05, 0.02240363411, 0.0007371394748, 0.0002518822736, 0.07912342619,
        0.01223369373, 0.0003525086768, 4.007474923e-05, 7.528567157e-07, 0.1716887284, 0.0153749314,
    ],
    'steepest': [
        2.616504699e-06, 2.246974654e-06, 0.00212345971, 1.151395399e-06, 6.061898993e-07, 6.792036326e-07,
        6.147979269e-07, 4.29193426e-06, 0.01232846739, 3.674661941e-05, 9.870752954e-07, 1.211527659e-05,
        0.0101238941, 5.575305334e-05, 5.812075004e-07, 0.0004525109982, 5.84072913e-07, 6.50967523e-07,
        0.006752943056, 0.0005937244115, 6.365430067e-07, 1.605016318e-06, 0.0003111413606, 1.320927923,
    ],
    'minimum/10': [
        0.0009162739012, 1.076374673e-05, 0.0009574852126, 0.000372759372, 1.823348001e-06, 7.870457897e-08,
        0.0004165990832, 0.0159985872, 0.1133823501, 5.484416576e-06, 0.3919406775, 3.16227766e-06,
        0.04275786806, 5.02912624e-05, 0.5561896846, 0.001219249862, 0.0005527324602, 0.6768750009,
        0.06611142187, 0.002716203248, 3.629180866e-05, 2.065705915e-07, 0.50064573, 0.3634457213,
    ],
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_on_the_recorded_curves(name):
    picks = [RULES[name](random_curve(k)) for k in range(24)]
    assert picks == pytest.approx(GOLDEN[name], rel=1e-8)


def test_short_curves_and_the_trim_by_hand():
    lrs = np.logspace(-5, 0, 6)
    c = hand_curve([3.0, 2.0, 1.0, 0.5, 0.2, 0.1], lrs)
    # six points: the first tenth is none, the last five go, but two always stay: lrs[0:2]
    assert minimum_div10(c) == pytest.approx(lrs[1] / 10, rel=1e-12)
    assert steepest(c) == pytest.approx(lrs[0], rel=1e-12)
    y = np.linspace(2.0, 1.0, 100)
    y[9] = 0.1  # a wild low point inside the first tenth: trimmed away
    assert minimum_div10(hand_curve(y, np.logspace(-7, 1, 100))) == pytest.approx(np.logspace(-7, 1, 100)[94] / 10)


def test_descent_edge_on_a_flat_curve():
    flat = hand_curve(np.full(50, 2.0), np.logspace(-6, 0, 50))
    assert descent_edge(flat) == pytest.approx(1.0 / 5)  # no descent: a fifth of the last LR, still within noise


# --- the safe pick, its interval and confidence -------------------------------------------------------
def with_momentum(curve, momentum):
    return Curve(curve.lrs, curve.losses, curve.smoothed, curve.family, momentum)


def test_read_keeps_a_margin_below_the_edge_that_grows_with_momentum():
    base = shaped(seed=3, family="sgd")
    margins = Margins(base=1.0, per_lag=0.5, per_spread=0.0)  # wide enough that the margin, not the descent, decides
    plain, carried = read(base, margins), read(with_momentum(base, 0.9), margins)
    assert plain.edge == carried.edge and 1e-2 < plain.edge < 2e-1
    assert plain.suggestion == pytest.approx(plain.edge / 10, rel=1e-9)
    # beta = 0.9 carries 9 steps; the sweep grows 10**(8/99) per step: 0.73 decades, half of it in the margin
    lag = 9 * np.log10(LRS[1] / LRS[0])
    assert np.log10(plain.suggestion / carried.suggestion) == pytest.approx(0.5 * lag, rel=1e-9)
    assert read(with_momentum(base, 0.9)).suggestion <= read(base).suggestion  # the shipped margins, too


def test_read_margin_grows_with_the_edge_uncertainty():
    sharp = read(shaped(seed=4, noise=0.005, descent=(-6.0, -5.0)), Margins(0.0, 0.0, 1.0))
    blurred = read(shaped(seed=4, noise=0.08, descent=(-6.0, -5.0)), Margins(0.0, 0.0, 1.0))
    ratio = lambda r: np.log10(r.edge / r.suggestion)
    assert ratio(blurred) > ratio(sharp) > 0


def test_read_pick_is_never_above_the_descent_picks_geometric_mean():
    curve = shaped(seed=5)
    r = read(curve)
    assert r.suggestion <= np.sqrt(descent_edge(curve) * valley(curve)) * (1 + 1e-12)
    assert safe_edge(curve) == r.suggestion and DEFAULT_RULE == "safe-edge"


def test_read_interval_holds_the_pick_and_reaches_above_the_edge():
    for seed in range(5):
        r = read(shaped(seed=seed))
        low, high = r.interval
        assert low < r.suggestion < high
        assert r.edge_seen and high == pytest.approx(r.edge * np.sqrt(10))


def test_read_without_an_edge_widens_the_interval_and_says_so():
    x = np.log10(LRS)
    y = np.interp(x, (-4.0, -2.0), [2.0, 0.5]) + np.random.default_rng(0).normal(0, 0.02, len(x))
    r = read(Curve(LRS, y, ema(y)))
    assert not r.edge_seen and r.interval[1] == pytest.approx(r.edge * 10)
    assert "never rose" in r.caveat


def test_read_confidence_falls_with_noise():
    clear = read(shaped(seed=6, noise=0.01))
    noisy = read(shaped(seed=6, noise=1.0))
    assert 0 <= noisy.confidence < clear.confidence <= 1
    assert clear.confidence > 0.5 and clear.caveat == ""
    assert "noise" in noisy.caveat


def test_momentum_of_reads_sgd_and_adam_groups():
    assert momentum_of({"momentum": 0.9}) == 0.9
    assert momentum_of({"betas": (0.8, 0.999)}) == 0.8
    assert momentum_of({"lr": 1.0}) == 0.0
    assert momentum_of({"momentum": None}) == 0.0


def test_the_lag_margin_is_capped_on_a_short_sweep():
    lrs = np.logspace(-7, 1, 31)  # 0.27 decades a step: beta 0.9 would lag 2.4 decades
    x = np.log10(lrs)
    y = np.interp(x, (-4.0, -2.0), [2.0, 0.5]) + np.where(x > -1, 10 ** (2 * (x + 1)) - 1, 0.0)
    short = Curve(lrs, y, ema(y), "adaptive", 0.9)
    r = read(short, Margins(0.0, 1.0, 0.0))
    expected = min(np.sqrt(descent_edge(short) * valley(short)), r.edge / 10)  # the lag capped at one decade
    assert r.suggestion == pytest.approx(expected, rel=1e-9)
    assert r.edge * 10**-2.4 < expected  # uncapped, the pick would sit 2.4 decades under the edge
