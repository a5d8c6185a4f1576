"""runner: a run from given weights, its cooldown branch (thrown away or kept), its cost, its save and resume;
the one optimizer step."""

import math

import pytest
import torch
from torch import nn

from gradpilot.schedules.factor import Wsd
from gradpilot.train.accumulation import item_counter, optimizer_step
from gradpilot.train.run import LocalRun, Setting, start, steps_for
from gradpilot.train.state import model_state
from tests.conftest import small_task


def test_a_branch_leaves_the_run_exactly_as_it_was_and_is_counted():
    task = small_task(0)
    run = LocalRun(task, Setting(0.01, 32), seed=0, weights=model_state(task.model))
    run.advance(10)
    before = model_state(task.model)
    branch = run.branch(3)
    assert 0.0 <= branch.score.value <= 1.0 and math.isfinite(branch.score.loss)
    assert all(torch.equal(before[k], v) for k, v in model_state(task.model).items())
    assert run.steps == 10 and run.cost.samples == (10 + 3) * 32
    assert run.cost.training > 0 and run.cost.evaluation > 0
    # by hand: the trunk held 0.01 for 10 steps; the branch decays linearly over 3: 0.01, 0.01·2/3, 0.01·1/3
    assert run.lrs == [0.01] * 10 and branch.lrs == pytest.approx((0.01, 0.01 * 2 / 3, 0.01 / 3))
    assert branch.schedule == Wsd(0, 10, 3) and branch.steps == 13 and len(branch.losses) == 3


def test_a_kept_branch_moves_the_model_on_and_gives_its_weights():
    task = small_task(0)
    run = LocalRun(task, Setting(0.01, 32), seed=0, weights=model_state(task.model))
    run.advance(5)
    before = model_state(task.model)
    branch = run.branch(2, keep=True, weights=True)
    assert branch.weights is not None
    assert all(torch.equal(branch.weights[k], v) for k, v in model_state(task.model).items())
    assert not all(torch.equal(before[k], v) for k, v in model_state(task.model).items())


def test_runs_from_one_optimizer_state_each_start_from_it_untouched():
    task = small_task(0)  # AdamW: moments and a step count that each step updates in place
    run = LocalRun(task, Setting(0.01, 32), seed=0, weights=model_state(task.model))
    run.advance(6)
    weights, state = model_state(task.model), run.optimizer.state_dict()
    moments = {i: s["exp_avg"].clone() for i, s in state["state"].items()}
    ends = []
    for _ in range(2):
        LocalRun(task, Setting(0.03, 32), seed=1, weights=weights, optimizer_state=state).advance(4)
        ends.append(model_state(task.model))
    assert all(torch.equal(ends[0][k], v) for k, v in ends[1].items())  # the second ran from the same state
    assert all(torch.equal(s["exp_avg"], moments[i]) for i, s in state["state"].items())
    assert all(int(s["step"]) == 6 for s in state["state"].values())


def test_a_saved_run_continues_exactly_as_the_unbroken_one(tmp_path):
    task = small_task()
    initial = model_state(task.model)
    setting = Setting(0.01, 32, schedule=Wsd(warmup=4))
    run = LocalRun(task, setting, seed=0, weights=initial)
    run.advance(10)
    run.branch(2)
    run.save(tmp_path / "r.pt")
    run.advance(20)
    after, losses = model_state(task.model), run.losses
    again = LocalRun(task, setting, seed=0, weights=initial)
    again.load(tmp_path / "r.pt")
    again.advance(20)
    assert all(torch.equal(after[k], v) for k, v in model_state(task.model).items())
    assert again.cost.samples == run.cost.samples and again.cost.io > 0
    assert again.losses == losses and again.lrs == run.lrs
    assert run.lrs[:5] == pytest.approx([0.0, 0.0025, 0.005, 0.0075, 0.01])  # by hand: warmup from 0 over 4 steps


def test_each_param_group_keeps_its_ratio_to_the_first():
    task = small_task(0)
    body, head = task.model[0], task.model[2]

    def two_groups(_params, lr):
        return torch.optim.SGD([{"params": body.parameters(), "lr": lr / 10}, {"params": head.parameters()}], lr=lr)

    import dataclasses

    task = dataclasses.replace(task, optimizer=two_groups)
    run = LocalRun(task, Setting(0.1, 32), seed=0, weights=model_state(task.model))
    run.advance(2)
    assert [g["lr"] for g in run.optimizer.param_groups] == [0.01, 0.1]


def test_a_task_s_own_runner_makes_its_runs():
    made = []

    def runner(task, setting, *, seed, weights, optimizer_state=None, folder=None):
        made.append((setting, seed, folder))
        return LocalRun(task, setting, seed=seed, weights=weights, optimizer_state=optimizer_state)

    import dataclasses

    task = dataclasses.replace(small_task(), runner=runner)
    run = start(task, Setting(0.01, 32), seed=3, weights=model_state(task.model), folder=None)
    assert isinstance(run, LocalRun) and made == [(Setting(0.01, 32), 3, None)]
    assert steps_for(320, 32) == 10 and steps_for(321, 32) == 11 and steps_for(0, 32) == 0


def test_optimizer_step_equals_one_plain_sgd_step_and_clips():
    torch.manual_seed(0)
    model, x, y = nn.Linear(3, 1), torch.randn(8, 3), torch.randn(8, 1)
    reference = nn.Linear(3, 1)
    reference.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer_step(model, opt, [(x[:4], y[:4]), (x[4:], y[4:])], nn.MSELoss(), None, torch.device("cpu"),
                   item_counter(nn.MSELoss(), None))
    nn.MSELoss()(reference(x), y).backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.1 * p.grad
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.parameters(), reference.parameters()))
    big = torch.optim.SGD(model.parameters(), lr=1.0)
    w = model.weight.detach().clone()
    optimizer_step(model, big, [(x, 100 * y)], nn.MSELoss(), None, torch.device("cpu"),
                   item_counter(nn.MSELoss(), None), max_grad_norm=0.5)
    moved = torch.cat([(model.weight - w).flatten(), model.bias.detach().flatten() * 0])
    assert moved.norm() <= 0.5 + 1e-6
