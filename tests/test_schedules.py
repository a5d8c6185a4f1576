import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, TensorDataset

from gradpilot import GradpilotError, fit
from gradpilot.schedules import builders as schedules
from gradpilot.schedules.builders import BUILDERS, lr_curve, make_schedule, options_of, wrap

STEPS_PER_EPOCH, EPOCHS = 5, 4
TOTAL = STEPS_PER_EPOCH * EPOCHS


def setup(lr=0.1):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(20, 3, generator=gen), torch.randn(20, 1, generator=gen))
    return model, torch.optim.SGD(model.parameters(), lr=lr), DataLoader(data, batch_size=4)


def torch_sequence(build, per_epoch=False, metrics=None, steps=TOTAL):
    """The LR before each optimizer step when torch's scheduler is driven by hand."""
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = build(opt)
    out = []
    for i in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if not per_epoch:
            sched.step()
        elif (i + 1) % STEPS_PER_EPOCH == 0:
            sched.step(metrics[(i + 1) // STEPS_PER_EPOCH - 1]) if metrics else sched.step()
    return out


@pytest.mark.parametrize(
    ("name", "options", "build", "per_epoch"),
    [
        ("constant", {}, lambda o: lr_scheduler.LambdaLR(o, lambda _: 1.0), False),
        ("step", {"step_size": 2, "gamma": 0.5}, lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5), True),
        ("cosine", {"eta_min": 1e-3}, lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=TOTAL, eta_min=1e-3), False),
        ("cosine", {"T_max": 7}, lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=7), False),
        ("onecycle", {"pct_start": 0.25}, lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=TOTAL, pct_start=0.25), False),
        ("onecycle", {"max_lr": 0.5, "div_factor": 10.0, "final_div_factor": 100.0},
         lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.5, total_steps=TOTAL, div_factor=10.0, final_div_factor=100.0), False),
        ("warmup_cosine", {"warmup_steps": 4, "eta_min": 1e-4},
         lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.LinearLR(o, 0.25, 1.0, total_iters=4),
                                                 lr_scheduler.CosineAnnealingLR(o, T_max=TOTAL - 4, eta_min=1e-4)], [4]), False),
        ("warmup_cosine", {"warmup_ratio": 0.1},
         lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.LinearLR(o, 0.5, 1.0, total_iters=2),
                                                 lr_scheduler.CosineAnnealingLR(o, T_max=TOTAL - 2)], [2]), False),
    ],
)
def test_fit_drives_each_named_schedule_exactly_like_torch(name, options, build, per_epoch):
    model, opt, loader = setup()
    result = fit(model, opt, nn.MSELoss(), loader, epochs=EPOCHS, scheduler=name, scheduler_options=options)
    assert list(result.lrs) == torch_sequence(build, per_epoch)
    assert lr_curve(name, steps=TOTAL, lr=0.1, steps_per_epoch=STEPS_PER_EPOCH, **options) == torch_sequence(build, per_epoch)


def test_plateau_gets_the_validation_metric_each_epoch():
    model, opt, loader = setup()
    result = fit(model, opt, nn.MSELoss(), loader, epochs=EPOCHS, scheduler="plateau",
                 scheduler_options={"patience": 0, "factor": 0.5}, val_loader=loader)
    expected = torch_sequence(lambda o: lr_scheduler.ReduceLROnPlateau(o, mode="min", patience=0, factor=0.5),
                              per_epoch=True, metrics=list(result.val_metrics))
    assert list(result.lrs) == expected
    # mode follows the metric's direction unless given
    model, opt, loader = setup()
    metric = lambda out, y: -nn.functional.mse_loss(out, y).item()
    result = fit(model, opt, nn.MSELoss(), loader, epochs=EPOCHS, scheduler="plateau", val_loader=loader,
                 metric=metric, higher_is_better=True, scheduler_options={"patience": 0, "factor": 0.5})
    as_max = torch_sequence(lambda o: lr_scheduler.ReduceLROnPlateau(o, mode="max", patience=0, factor=0.5),
                            per_epoch=True, metrics=list(result.val_metrics))
    as_min = torch_sequence(lambda o: lr_scheduler.ReduceLROnPlateau(o, mode="min", patience=0, factor=0.5),
                            per_epoch=True, metrics=list(result.val_metrics))
    assert list(result.lrs) == as_max and as_max != as_min  # a rising metric is improving: the LR is kept


def test_a_users_own_torch_scheduler_is_driven_too():
    model, opt, loader = setup()
    sched = lr_scheduler.ExponentialLR(opt, gamma=0.9)
    result = fit(model, opt, nn.MSELoss(), loader, epochs=2, scheduler=sched)
    assert result.lrs == pytest.approx([0.1 * 0.9**i for i in range(10)])
    model, opt, loader = setup()
    plateau = lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    assert wrap(plateau).interval == "epoch" and wrap(plateau).needs_metric


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheduler": "cosinus"}, "unknown scheduler 'cosinus'; choose one of"),
        ({"scheduler": "plateau"}, "plateau scheduler .* pass val_loader"),
        ({"scheduler": "cosine", "scheduler_options": {"gamma": 0.1}}, "takes no option \\['gamma'\\]"),
        ({"scheduler_options": {"eta_min": 0.1}}, "without a scheduler name"),
        ({"scheduler": "warmup_cosine", "scheduler_options": {"warmup_steps": 500}}, "warmup must last"),
        ({"scheduler": 42}, "must be a name"),
    ],
)
def test_bad_scheduler_arguments_fail_at_once(kwargs, message):
    model, opt, loader = setup()
    with pytest.raises(GradpilotError, match=message):
        fit(model, opt, nn.MSELoss(), loader, epochs=1, **kwargs)


def test_schedule_helpers():
    assert set(BUILDERS) == {"constant", "step", "cosine", "plateau", "onecycle", "warmup_cosine",
                             "constant_with_warmup", "linear", "cosine_with_min_lr", "warmup_stable_decay"}
    assert options_of("step") == ["step_size", "gamma"]
    with pytest.raises(GradpilotError, match="total_steps"):
        make_schedule("cosine", torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), total_steps=0)
    with pytest.raises(GradpilotError, match="one metric per epoch"):
        lr_curve("plateau", steps=10)
    curve = lr_curve("plateau", steps=6, steps_per_epoch=2, metrics=[1.0, 1.0, 1.0], patience=0, factor=0.5)
    assert curve == pytest.approx([1e-3, 1e-3, 1e-3, 1e-3, 5e-4, 5e-4])  # the first metric only sets the best


def lr_sequence(build, factor=None, steps=12):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    schedule = build(opt)
    if factor is not None:
        schedules.multiply_lr(opt, schedule, factor)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    return out


@pytest.mark.parametrize("name", ["constant", "cosine", "warmup_cosine", "onecycle"])
def test_multiply_lr_scales_the_whole_rest_of_the_schedule(name):
    options = {"warmup_steps": 3} if name == "warmup_cosine" else {}
    build = lambda opt: schedules.make_schedule(name, opt, total_steps=12, **options)
    plain, halved = lr_sequence(build), lr_sequence(build, 0.5)
    assert halved == pytest.approx([0.5 * lr for lr in plain], rel=1e-9)  # the same curve, scaled
    assert plain[0] != halved[0]


def test_multiply_lr_on_a_users_chained_scheduler_and_plateau():
    chained = lambda opt: schedules.wrap(lr_scheduler.SequentialLR(
        opt, [lr_scheduler.LinearLR(opt, 0.5, total_iters=2), lr_scheduler.CosineAnnealingLR(opt, T_max=8)], [2]))
    assert lr_sequence(chained, 0.1) == pytest.approx([0.1 * lr for lr in lr_sequence(chained)], rel=1e-9)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    plateau = schedules.make_schedule("plateau", opt, total_steps=10, min_lr=0.01)
    assert schedules.multiply_lr(opt, plateau, 0.5) == (0.1, 0.05)
    assert plateau.scheduler.min_lrs == [0.005]


def test_defaults_by_hand():
    assert lr_curve("step", steps=6, lr=1.0, steps_per_epoch=2) == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    # plateau: patience 2, factor 0.5 — a metric that never improves halves the LR after 3 epochs
    curve = lr_curve("plateau", steps=5, lr=1.0, metrics=[1.0] * 5)
    assert curve == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.5])
    # warmup_cosine: 5% warmup of 100 steps = 5 steps, torch's LinearLR from lr/5: lr·(1/5 + (4/5)·t/5)
    assert lr_curve("warmup_cosine", steps=100, lr=1.0)[:6] == pytest.approx([0.2, 0.36, 0.52, 0.68, 0.84, 1.0])
    assert lr_curve("cosine", steps=4, lr=1.0) == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])


def test_warmup_must_fit_inside_the_run():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    for bad in (0, 10, 11):
        with pytest.raises(GradpilotError, match="warmup must last between 1 and 9 steps"):
            make_schedule("warmup_cosine", opt, total_steps=10, warmup_steps=bad)
    assert lr_curve("warmup_cosine", steps=10, lr=1.0, warmup_steps=9)[:3] == pytest.approx(
        [1 / 9, 1 / 9 + 8 / 81, 1 / 9 + 16 / 81])
    assert lr_curve("warmup_cosine", steps=10, lr=1.0, warmup_steps=1)[:2] == pytest.approx([1.0, 1.0])


def test_plateau_curve_reads_one_metric_per_epoch_in_order():
    # epochs of 2 steps; the metric improves, stalls at epoch 3: with patience 0 the LR halves from then on
    curve = lr_curve("plateau", steps=8, lr=1.0, steps_per_epoch=2, metrics=[3.0, 2.0, 2.0, 2.0], patience=0,
                     factor=0.5)
    assert curve == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5])
    assert lr_curve("step", steps=3, lr=1.0, steps_per_epoch=1, metrics=[9.0, 9.0, 9.0]) == pytest.approx([1, 0.1, 0.01])


def test_curves_have_a_length_limit():
    with pytest.raises(GradpilotError, match="more than the 5,000,000"):
        lr_curve("constant", steps=5_000_001)
    assert len(lr_curve("constant", steps=20_000)) == 20_000


def test_a_one_step_run_has_a_schedule():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    assert make_schedule("cosine", opt, total_steps=1).interval == "step"
    assert lr_curve("cosine", steps=1, lr=0.1) == [0.1]


def scripted_plateau(values, **kwargs):
    model, opt, loader = setup()
    seen = iter(values)
    return fit(model, opt, nn.MSELoss(), loader, epochs=len(values), scheduler="plateau", val_loader=[loader.dataset[:4]],
               metric=lambda _out, _y: next(seen), **kwargs)


def test_plateau_follows_the_metric_s_direction_and_its_floor():
    rising = [1.0, 2.0, 3.0, 4.0]
    up = scripted_plateau(rising, higher_is_better=True, scheduler_options={"patience": 0, "factor": 0.5})
    assert set(up.lrs) == {0.1}  # a rising accuracy is improvement: the LR stays
    down = scripted_plateau(rising, higher_is_better=False, scheduler_options={"patience": 0, "factor": 0.5})
    # a rising loss is no improvement: halved after each epoch from the second on
    assert down.lrs[::STEPS_PER_EPOCH] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    floor = scripted_plateau(rising, scheduler_options={"patience": 0, "factor": 0.1, "min_lr": 0.05})
    assert floor.lrs[::STEPS_PER_EPOCH] == pytest.approx([0.1, 0.1, 0.05, 0.05])


def test_a_schedule_covers_the_short_last_window():
    model, opt, _ = setup()
    loader = DataLoader(TensorDataset(torch.randn(10, 3), torch.randn(10, 1)), batch_size=1)  # 10 batches
    result = fit(model, opt, nn.MSELoss(), loader, epochs=2, accumulation_steps=4, scheduler="cosine")
    # 4 + 4 + 2 batches: 3 steps an epoch, 6 in all — the cosine ends on the last one, not past it
    reference = torch_sequence(lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=6), per_epoch=False, steps=6)
    assert list(result.lrs) == pytest.approx(reference) and result.steps == 6


@pytest.mark.parametrize(("name", "options", "message"), [
    ("step", {"step_size": 0}, "step_size must be a positive whole number"),
    ("step", {"gamma": 0.0}, "gamma must be"),
    ("cosine", {"eta_min": 1.0}, r"eta_min=1 must be at least 0 and below the learning rate \(0.1\)"),
    ("warmup_cosine", {"eta_min": 0.1}, "eta_min=0.1 must be at least 0 and below the learning rate"),
    ("cosine_with_min_lr", {"min_lr": 1.0}, "min_lr=1 must be at least 0 and below the learning rate"),
    ("cosine_with_min_lr", {"min_lr_rate": 1.5}, r"min_lr_rate must be in \[0, 1\)"),
    ("linear", {"warmup_steps": 2000}, r"warmup_steps=2000 is not shorter than the run \(100 steps\)"),
    ("constant_with_warmup", {"warmup_steps": 100}, "would never reach its peak"),
    ("linear", {"warmup_steps": -1}, r"warmup_steps must be a whole number of steps, or a share of the run"),
])
def test_options_that_would_not_decay_or_never_reach_the_lr_are_refused(name, options, message):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(GradpilotError, match=message) as err:
        schedules.make_schedule(name, opt, total_steps=100, **options)
    assert "\n" not in str(err.value)


def test_a_decay_floor_below_the_lr_and_a_warmup_shorter_than_the_run_are_kept():
    lrs = schedules.lr_curve("cosine_with_min_lr", steps=100, lr=0.1, warmup_steps=99, min_lr=0.0999)
    assert max(lrs) == pytest.approx(0.1) and min(lrs) == 0.0 and lrs[-1] >= 0.0999 * 0.999  # warmup from 0
    assert min(schedules.lr_curve("cosine", steps=100, lr=0.1, eta_min=0.05)) >= 0.05
