import math

import pytest

from gradpilot import GradpilotError
from gradpilot.scaling import (
    effective_batch_size,
    noise_scale,
    optimizer_family,
    plan,
    scale_lr,
    search_batch_size,
    warmup_ratio,
)


def test_worked_examples():
    assert scale_lr(1e-3, 32, 64, "sqrt") == pytest.approx(1.414e-3, rel=1e-3)
    p = plan(64, 16, lr=3e-5, batch_size=16, rule="sqrt")
    assert (p.micro_batch_size, p.accumulation_steps, p.effective_batch_size) == (16, 4, 64)
    assert p.lr == pytest.approx(6e-5)
    assert scale_lr(0.1, 256, 1024, "linear") == pytest.approx(0.4)


def test_each_rule_and_auto_by_optimizer():
    assert scale_lr(0.1, 128, 512, "none") == 0.1
    assert scale_lr(0.1, 128, 512, "auto", optimizer="SGD") == pytest.approx(0.4)
    assert scale_lr(1e-3, 128, 512, "auto", optimizer="adamw") == pytest.approx(2e-3)
    assert scale_lr(1e-3, 512, 128, "linear") == pytest.approx(2.5e-4)  # shrinking works too
    assert optimizer_family("SGD") == optimizer_family("sgd_nesterov") == "sgd"
    assert optimizer_family("RMSprop") == optimizer_family("AdamW") == "adaptive"


def test_effective_batch_is_micro_times_accumulation_times_world():
    assert effective_batch_size(16, 4, 2) == 128
    assert effective_batch_size(32) == 32


def test_warmup_only_for_jumps_above_2x_and_growing_with_the_jump():
    assert warmup_ratio(2.0) == 0.0
    assert 0 < warmup_ratio(4.0) < warmup_ratio(32.0) <= 0.1
    p = plan(1024, 256, lr=0.1, batch_size=256, optimizer="sgd", total_steps=10_000)
    assert p.lr == pytest.approx(0.4) and p.lr_rule == "linear"
    assert p.warmup_ratio == pytest.approx(warmup_ratio(4.0))
    assert p.warmup_steps == math.ceil(p.warmup_ratio * 10_000)
    small = plan(64, 64, lr=1e-3, batch_size=32, optimizer="adam")
    assert small.warmup_ratio == 0.0 and small.warmup_steps is None


def test_plan_exact_split_prefers_fewest_accumulation_steps():
    p = plan(100, 32)
    assert (p.micro_batch_size, p.accumulation_steps, p.exact) == (25, 4, True)
    assert p.lr is None and p.lr_rule is None


def test_plan_target_not_divisible_says_how_close():
    p = plan(97, 32)  # 97 is prime: no exact split with micro <= 32 and at most 8 steps
    assert not p.exact
    assert p.effective_batch_size == 96 and "1 short" in p.note


def test_plan_target_smaller_than_one_micro_batch():
    p = plan(8, 32)
    assert (p.micro_batch_size, p.accumulation_steps, p.effective_batch_size, p.exact) == (8, 1, 8, True)


def test_plan_with_several_processes():
    p = plan(256, 32, world_size=4)
    assert (p.micro_batch_size, p.accumulation_steps, p.world_size, p.effective_batch_size) == (32, 2, 4, 256)
    uneven = plan(100, 64, world_size=3)
    assert uneven.effective_batch_size == 99 and not uneven.exact
    tiny = plan(2, 8, world_size=4)
    assert tiny.effective_batch_size == 4 and "below one item per process" in tiny.note


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: scale_lr(1e-3, 0, 64), "from_batch must be a positive whole number"),
        (lambda: scale_lr(1e-3, 32, -1), "to_batch must be a positive whole number"),
        (lambda: scale_lr(float("nan"), 32, 64, "sqrt"), "positive finite"),
        (lambda: scale_lr(1e-3, 32, 64, "cubic"), "unknown LR scaling rule 'cubic'"),
        (lambda: scale_lr(1e-3, 32, 64, "auto"), "needs the optimizer name"),
        (lambda: plan(0, 16), "target_batch must be a positive"),
        (lambda: plan(64, 16, lr=1e-3), "give both lr and batch_size"),
        (lambda: plan(64, 16, lr=1e-3, batch_size=16, rule="sqrt", total_steps=0), "total_steps"),
        (lambda: effective_batch_size(8, True), "accumulation_steps must be a positive whole number"),
    ],
)
def test_bad_input_raises_value_error_with_a_clear_message(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_search_doubles_then_bisects():
    best, tried = search_batch_size(lambda n: n <= 37)
    assert best == 37
    assert [n for n, _ in tried] == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
    assert [ok for _, ok in tried] == [True] * 6 + [False, False, False, True, False, True]


def test_search_stops_bisecting_within_a_thirty_second_of_the_size():
    best, tried = search_batch_size(lambda n: n <= 3000)
    assert 3000 - 3000 // 32 <= best <= 3000
    assert len(tried) <= 12 + 6 + 1


def test_search_respects_start_and_max_size():
    best, tried = search_batch_size(lambda _n: True, start=3, max_size=20)
    assert best == 20 and [n for n, _ in tried] == [3, 6, 12, 20]
    best, tried = search_batch_size(lambda n: n <= 30, start=4, max_size=50)
    assert best == 30 and [n for n, _ in tried][:5] == [4, 8, 16, 32, 24]
    assert search_batch_size(lambda _n: False, start=2) == (0, [(2, False)])


def test_noise_scale_recovers_known_parts():
    # |G|^2 = 4, tr(Σ) = 100: E|G_B|^2 = 4 + 100/B
    est = noise_scale(4 + 100 / 10, 4 + 100 / 100, 10, 100)
    assert est.grad_sq == pytest.approx(4) and est.trace_cov == pytest.approx(100) and est.b_simple == pytest.approx(25)
    with pytest.raises(GradpilotError, match="not measurable"):
        noise_scale(1.0, 2.0, 10, 100)
    with pytest.raises(GradpilotError, match="b_big must be larger"):
        noise_scale(1.0, 2.0, 100, 10)


@pytest.mark.parametrize("name", ["Lion", "LBFGS", "Shampoo"])
def test_an_optimizer_gradpilot_does_not_know_is_asked_about_not_guessed(name):
    assert optimizer_family(name) == "unknown"
    with pytest.raises(ValueError, match=f"cannot tell whether optimizer '{name}' scales like SGD or like Adam"):
        scale_lr(1e-3, 32, 64, "auto", optimizer=name)
    assert scale_lr(1e-3, 32, 128, "sqrt", optimizer=name) == pytest.approx(2e-3)  # a rule named is used
    assert optimizer_family("Adafactor") == optimizer_family("adamw_torch_fused") == "adaptive"


def test_plan_for_huge_targets_is_exact_and_immediate():
    p = plan(100_000_000, 1)
    assert (p.micro_batch_size, p.accumulation_steps, p.exact) == (1, 100_000_000, True)
    p = plan(100_000_007, 3)  # a prime: the closest split, one item over
    assert (p.micro_batch_size, p.accumulation_steps, p.effective_batch_size) == (3, 33_333_336, 100_000_008)
    p = plan(10**12, 10**6 + 1)
    assert p.exact and p.micro_batch_size * p.accumulation_steps == 10**12 and p.micro_batch_size <= 10**6 + 1


def test_family_names_beyond_the_obvious():
    assert {optimizer_family(n) for n in ("LARS", "ASGD", "nesterov", "momentum", "SGDW")} == {"sgd"}
    assert optimizer_family("sgd_with_my_twist") == "sgd"  # any SGD variant by its prefix
    assert {optimizer_family(n) for n in ("Adadelta", "LAMB", "adam8bit", "PagedAdamW", "RAdam")} == {"adaptive"}


def test_warmup_share_constants_are_pinned():
    assert warmup_ratio(2.0) == 0.0 and warmup_ratio(2.0001) > 0  # only above a doubling
    assert warmup_ratio(32) == pytest.approx(0.011 * 5)  # Goyal et al.: 5 of 90 epochs (5.6%) for 32×
    assert warmup_ratio(2**9) == pytest.approx(0.099)
    assert warmup_ratio(2**10) == 0.1 and warmup_ratio(2**40) == 0.1  # capped at a tenth


def test_noise_scale_refuses_a_zero_part():
    with pytest.raises(ValueError, match="not measurable"):
        noise_scale(2.0, 2.0, 8, 64)  # equal norms: tr(Σ) = 0
    with pytest.raises(ValueError, match="not measurable"):
        noise_scale(8.0, 1.0, 8, 64)  # 64·1 = 8·8: |G|² = 0
    ok = noise_scale(3.0, 1.25, 8, 64)  # |G|² = 1, tr(Σ) = 16 by hand
    assert (ok.grad_sq, ok.trace_cov, ok.b_simple) == pytest.approx((1.0, 16.0, 16.0))


def test_noise_scale_needs_two_different_batch_sizes():
    with pytest.raises(ValueError, match="b_big must be larger than b_small"):
        noise_scale(2.0, 1.0, 8, 8)


def test_plan_scales_the_lr_to_the_batch_it_reaches_not_the_one_asked_for():
    p = plan(100_000_007, 3, lr=1.0, batch_size=100_000_007, optimizer="sgd")
    assert p.effective_batch_size == 100_000_008
    assert p.lr == pytest.approx(100_000_008 / 100_000_007, rel=1e-15) and p.lr != 1.0
