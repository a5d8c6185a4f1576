"""run: gradpilot's one engine — a run from given weights, its cooldown branch (thrown away or kept) on the data
the run trains on next, its cost, its save and resume, its epochs as the Trainer counts them; the one optimizer
step."""

import math

import pytest
import torch
from torch import nn

from gradpilot.schedules.factor import Wsd
from gradpilot.train.accumulation import StepParts, optimizer_step
from gradpilot.train.run import LocalRun, local_run, start
from gradpilot.train.seam import Setting, steps_for
from gradpilot.train.state import model_state
from tests.conftest import small_task


def test_a_branch_leaves_the_run_exactly_as_it_was_and_is_counted():
    task = small_task(0)
    run = local_run(task, Setting(0.01, 32), seed=0, weights=model_state(task.model))
    run.advance(10)
    before = model_state(task.model)
    branch = run.branch(3)
    assert 0.0 <= branch.score.value <= 1.0 and math.isfinite(branch.score.loss)
    assert all(torch.equal(before[k], v) for k, v in model_state(task.model).items())
    assert run.steps == 10 and run.cost.items == (10 + 3) * 32 and run.cost.validations == 1
    assert run.cost.training > 0 and run.cost.validation > 0
    # by hand: the trunk held 0.01 for 10 steps; the branch decays linearly over 3: 0.01, 0.01·2/3, 0.01·1/3
    assert run.lrs == [0.01] * 10 and branch.lrs == pytest.approx((0.01, 0.01 * 2 / 3, 0.01 / 3))
    assert branch.schedule == Wsd(0, 10, 3) and branch.steps == 13 and len(branch.losses) == 3


def test_a_kept_branch_moves_the_model_on_and_gives_its_weights():
    task = small_task(0)
    run = local_run(task, Setting(0.01, 32), seed=0, weights=model_state(task.model))
    run.advance(5)
    before = model_state(task.model)
    branch = run.branch(2, keep=True, weights=True)
    assert branch.weights is not None
    assert all(torch.equal(branch.weights[k], v) for k, v in model_state(task.model).items())
    assert not all(torch.equal(before[k], v) for k, v in model_state(task.model).items())


def test_runs_from_one_optimizer_state_each_start_from_it_untouched():
    task = small_task(0)  # AdamW: moments and a step count that each step updates in place
    run = local_run(task, Setting(0.01, 32), seed=0, weights=model_state(task.model))
    run.advance(6)
    weights, state = model_state(task.model), run.optimizer.state_dict()
    moments = {i: s["exp_avg"].clone() for i, s in state["state"].items()}
    ends = []
    for _ in range(2):
        local_run(task, Setting(0.03, 32), seed=1, weights=weights, optimizer_state=state).advance(4)
        ends.append(model_state(task.model))
    assert all(torch.equal(ends[0][k], v) for k, v in ends[1].items())  # the second ran from the same state
    assert all(torch.equal(s["exp_avg"], moments[i]) for i, s in state["state"].items())
    assert all(int(s["step"]) == 6 for s in state["state"].values())


def test_a_saved_run_continues_exactly_as_the_unbroken_one(tmp_path):
    task = small_task()
    initial = model_state(task.model)
    setting = Setting(0.01, 32, schedule=Wsd(warmup=4))
    run = local_run(task, setting, seed=0, weights=initial)
    run.advance(10)
    run.branch(2)
    run.save(tmp_path / "r")
    run.advance(20)
    after, losses = model_state(task.model), run.losses
    again = local_run(task, setting, seed=0, weights=initial)
    again.load(tmp_path / "r")
    again.advance(20)
    assert all(torch.equal(after[k], v) for k, v in model_state(task.model).items())
    assert again.cost.items == run.cost.items and again.cost.io > 0
    assert again.losses == losses and again.lrs == run.lrs
    assert run.lrs[:5] == pytest.approx([0.0, 0.0025, 0.005, 0.0075, 0.01])  # by hand: warmup from 0 over 4 steps


def test_each_param_group_keeps_its_ratio_to_the_first():
    task = small_task(0)
    body, head = task.model[0], task.model[2]

    def two_groups(_params, lr):
        return torch.optim.SGD([{"params": body.parameters(), "lr": lr / 10}, {"params": head.parameters()}], lr=lr)

    import dataclasses

    task = dataclasses.replace(task, optimizer=two_groups)
    run = local_run(task, Setting(0.1, 32), seed=0, weights=model_state(task.model))
    run.advance(2)
    assert [g["lr"] for g in run.optimizer.param_groups] == [0.01, 0.1]


def test_a_task_s_own_runner_makes_its_runs():
    made = []

    def runner(task, setting, *, seed, weights, optimizer_state=None, folder=None):
        made.append((setting, seed, folder))
        return local_run(task, setting, seed=seed, weights=weights, optimizer_state=optimizer_state)

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
    optimizer_step(StepParts.assemble(model, opt, loss_fn=nn.MSELoss()), [(x[:4], y[:4]), (x[4:], y[4:])])
    nn.MSELoss()(reference(x), y).backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.1 * p.grad
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.parameters(), reference.parameters()))
    big = torch.optim.SGD(model.parameters(), lr=1.0)
    w = model.weight.detach().clone()
    optimizer_step(StepParts.assemble(model, big, loss_fn=nn.MSELoss(), max_grad_norm=0.5), [(x, 100 * y)])
    moved = torch.cat([(model.weight - w).flatten(), model.bias.detach().flatten() * 0])
    assert moved.norm() <= 0.5 + 1e-6


def test_an_epoch_is_the_trainer_s_count_of_steps_its_last_batch_partial():
    task = small_task(0, n=500)  # 500 items at 32: 16 micro-batches, the last of 20 items; by 3: 6 steps an epoch
    run = local_run(task, Setting(0.01, 32, 3), seed=0, weights=model_state(task.model))
    assert run.steps_per_epoch == 6 == math.ceil(math.ceil(500 / 32) / 3)
    run.advance(12)
    assert run.epoch == 2 and run.cost.items == 2 * 500  # two whole epochs: every item twice, none more


def test_a_kept_branch_trains_what_a_run_on_its_whole_schedule_trains():
    """The cooldown branch goes on with the very data the run would train on next: keeping the branch at step 10
    gives, bit for bit, a run trained from the start on the branch's whole schedule — what a plan replays."""
    task = small_task(0)
    initial = model_state(task.model)
    run = local_run(task, Setting(0.01, 32, schedule=Wsd(warmup=2)), seed=3, weights=initial)
    run.advance(10)
    run.branch(4)  # a branch thrown away changes nothing
    branch = run.branch(6, keep=True, weights=True)
    whole = local_run(task, Setting(0.01, 32, schedule=branch.schedule), seed=3, weights=initial)
    whole.advance(16)
    assert branch.schedule == Wsd(2, 8, 6) and whole.lrs == run.lrs
    assert all(torch.equal(branch.weights[k], v) for k, v in model_state(task.model).items())
    assert whole.losses == run.losses


def test_a_run_of_a_user_loader_resumes_mid_epoch_in_the_loader_s_own_order(tmp_path):
    from torch.utils.data import DataLoader

    from gradpilot.train.data import FromLoader
    from gradpilot.train.run import Validation
    from gradpilot.train.seam import Setting as S

    def make(gen_seed):
        torch.manual_seed(0)
        model = nn.Linear(2, 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = DataLoader(small_task(0).train_data, batch_size=16, shuffle=True,
                            generator=torch.Generator().manual_seed(gen_seed))
        return LocalRun(StepParts.assemble(model, opt, loss_fn=nn.CrossEntropyLoss()), FromLoader(loader),
                        setting=S(0.1, 16), schedule=None, validation=Validation(list, None), model=model)

    whole = make(1)
    whole.advance(45)  # 512 items by 16: 32 steps an epoch, so step 45 is mid-way through the second
    broken = make(1)
    broken.advance(40)
    broken.save(tmp_path / "r")
    again = make(99)  # its generator's seed is put back from the checkpoint
    again.load(tmp_path / "r")
    again.advance(45)
    assert again.losses == whole.losses and all(torch.equal(a, b) for a, b in
                                                zip(again.model.parameters(), whole.model.parameters()))
