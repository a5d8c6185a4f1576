"""runner: a short run from given weights, its cooldown branch, its cost; the one optimizer step."""

import math

import torch
from torch import nn

from gradpilot._state import model_state
from gradpilot.accumulation import item_counter, optimizer_step
from gradpilot.runner import LocalRun, Setting
from tests.conftest import small_task


def test_a_branch_leaves_the_run_exactly_as_it_was_and_is_counted():
    task = small_task(0)
    run = LocalRun(task, Setting(0.01, 32), seed=0, weights=model_state(task.model))
    run.advance(320)
    before = model_state(task.model)
    score = run.score(96)
    assert 0.0 <= score <= 1.0 and math.isfinite(run.last_loss)
    assert all(torch.equal(before[k], v) for k, v in model_state(task.model).items())
    assert run.samples == 320 and run.cost.samples == 320 + 96
    assert run.cost.training > 0 and run.cost.evaluation > 0


def test_a_saved_run_continues_exactly_as_the_unbroken_one(tmp_path):
    task = small_task()
    initial = model_state(task.model)
    run = LocalRun(task, Setting(0.01, 32, warmup_samples=128), seed=0, weights=initial)
    run.advance(320)
    run.score(64)
    run.save(tmp_path / "r.pt")
    run.advance(640)
    after = model_state(task.model)
    again = LocalRun(task, Setting(0.01, 32, warmup_samples=128), seed=0, weights=initial)
    again.load(tmp_path / "r.pt")
    again.advance(640)
    assert all(torch.equal(after[k], v) for k, v in model_state(task.model).items())
    assert again.cost.samples == run.cost.samples and again.cost.io > 0


def test_each_param_group_keeps_its_ratio_to_the_first():
    task = small_task(0)
    body, head = task.model[0], task.model[2]

    def two_groups(_params, lr):
        return torch.optim.SGD([{"params": body.parameters(), "lr": lr / 10}, {"params": head.parameters()}], lr=lr)

    import dataclasses

    task = dataclasses.replace(task, optimizer=two_groups)
    run = LocalRun(task, Setting(0.1, 32, warmup_samples=0), seed=0, weights=model_state(task.model))
    run.advance(64)
    assert [g["lr"] for g in run.optimizer.param_groups] == [0.01, 0.1]


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
