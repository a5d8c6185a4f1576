"""train.plan: a plan as gradpilot trains it — read and checked in one place, its schedule holding its shape when the
run's length changes (or refused in one line), its optimizer settings on the task's optimizer."""

import math

import pytest
import torch
import yaml

from gradpilot import GradpilotError, fit
from gradpilot.train.plan import Plan
from tests.conftest import small_task

PLAN = {"learning_rate": 0.01, "per_device_train_batch_size": 32, "gradient_accumulation_steps": 1,
        "num_train_epochs": 2, "lr_scheduler_type": "warmup_stable_decay", "warmup_steps": 2,
        "lr_scheduler_kwargs": {"num_decay_steps": 8, "decay_type": "linear", "min_lr_ratio": 0.0},
        "weight_decay": 0.01, "optim": "adamw_torch", "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8}


def by_hand(total, warmup=2, decay=8, peak=0.01):
    """transformers' warmup_stable_decay (linear), written out: the absolute reference."""
    out = []
    for step in range(total):
        if step < warmup:
            out.append(peak * step / warmup)
        elif step < total - decay:
            out.append(peak)
        else:
            out.append(peak * (1 - (step - (total - decay)) / decay))
    return out


@pytest.mark.parametrize("epochs", [2, 4])
def test_a_plan_trains_its_schedule_to_its_end_at_any_number_of_epochs(epochs):
    task = small_task(0, n=512)  # 16 steps an epoch at 32
    result = fit(task, plan={**PLAN, "num_train_epochs": epochs})
    total = 16 * epochs
    assert result.steps == total and result.epochs_completed == epochs
    assert list(result.lrs) == pytest.approx(by_hand(total))  # the decay at the end, however long the run
    assert result.lrs[-1] == pytest.approx(0.01 / 8)


def test_a_plan_whose_decay_cannot_fit_the_run_is_refused_in_one_line():
    task = small_task(0, n=128)  # 4 steps an epoch
    with pytest.raises(GradpilotError, match=r"longer than the run \(8 steps\)") as err:
        fit(task, plan={**PLAN, "lr_scheduler_kwargs": {"num_decay_steps": 20}})
    assert "\n" not in str(err.value)
    written_for_another = {**PLAN, "lr_scheduler_kwargs": {"num_decay_steps": 2, "num_stable_steps": 28}}
    with pytest.raises(GradpilotError, match="num_stable_steps=28 was written for a run of 32 steps; this one has 8"):
        fit(task, plan=written_for_another)


def test_the_plan_s_steps_are_the_trainer_s_count():
    plan = Plan.read({**PLAN, "per_device_train_batch_size": 10, "gradient_accumulation_steps": 3})
    assert plan.steps_per_epoch(95) == 4 == math.ceil(math.ceil(95 / 10) / 3)
    assert plan.steps_per_epoch(95, world=2) == 2 == math.ceil(math.ceil(48 / 10) / 3)  # 48 items a process


@pytest.mark.parametrize(("change", "message"), [
    ({"learning_rate": -1}, "learning_rate must be a positive number"),
    ({"per_device_train_batch_size": 2.5}, "per_device_train_batch_size must be a whole number"),
    ({"num_train_epochs": None}, "the plan has no num_train_epochs"),
    ({"max_steps": 100}, "gradpilot trains whole epochs"),
    ({"lr_scheduler_type": "polynomial"}, "is not one gradpilot trains from a plan"),
    ({"lr_scheduler_kwargs": "x"}, "lr_scheduler_kwargs must be a mapping"),
    ({"warmup_ratio": 0.1}, "both warmup_steps and warmup_ratio"),
    ({"optim": "sgd"}, "the plan's optim is 'sgd', the task's optimizer is AdamW"),
])
def test_a_bad_plan_is_one_line(change, message):
    with pytest.raises(GradpilotError, match=message) as err:
        fit(small_task(0), plan={**PLAN, **change})
    assert "\n" not in str(err.value)


def test_a_plan_file_and_its_optimizer_settings(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({**PLAN, "weight_decay": 0.2, "adam_beta1": 0.8, "logging_steps": 5}))
    task = small_task(0)
    with pytest.warns(UserWarning, match="logging_steps are TrainingArguments gradpilot leaves to the task"):
        result = fit(task, plan=path)
    assert result.steps == 32
    from gradpilot.train.plan import apply_optimizer

    optimizer = task.make_optimizer(0.01)
    apply_optimizer(optimizer, Plan.read(path).optimizer, task)
    group = optimizer.param_groups[0]
    assert group["weight_decay"] == 0.2 and group["betas"] == (0.8, 0.999)
    with pytest.raises(GradpilotError, match=r"plan .*does not exist"):
        fit(task, plan=tmp_path / "none.yaml")


def test_lr_and_plan_need_a_task():
    model = torch.nn.Linear(2, 1)
    with pytest.raises(GradpilotError, match=r"need a gradpilot\.Task"):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.MSELoss(), [], epochs=1, lr=0.1)


def test_fit_a_task_at_another_lr_and_seed():
    task = small_task(0)
    one = fit(task, epochs=1, lr=0.05, seed=1)
    task = small_task(0)
    again = fit(task, epochs=1, lr=0.05, seed=1)
    assert one.lrs[0] == 0.05 and one.train_losses == again.train_losses  # the same seed, the same run
    task = small_task(0)
    other = fit(task, epochs=1, lr=0.05, seed=2)
    assert other.train_losses != one.train_losses  # another seed, another data order
