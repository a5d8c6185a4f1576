"""precision: bf16 and fp16 in fit, the range test and the short runs (CPU autocast), and fp16's skipped steps."""

import dataclasses

import pytest
import torch
from torch import nn

from gradpilot import Task, find_lr, fit
from gradpilot.errors import GradpilotError
from gradpilot.examples import spirals
from gradpilot.train.accumulation import StepParts, item_counter, optimizer_step
from gradpilot.train.precision import scaler_for, skipped
from gradpilot.train.run import local_run
from gradpilot.train.seam import Setting
from gradpilot.train.state import model_state


class Recording(nn.Module):
    """An MLP that records the dtype its hidden layer computed in, training and evaluating apart."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden, self.out = nn.Linear(2, 32), nn.Linear(32, 3)
        self.seen: dict[bool, set[torch.dtype]] = {True: set(), False: set()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x)
        self.seen[self.training].add(h.dtype)
        return self.out(torch.relu(h))


def task(precision: str) -> Task:
    torch.manual_seed(0)
    return Task(model=Recording(), train_data=spirals(512, seed=0), val_data=spirals(128, seed=1),
                loss_fn=nn.CrossEntropyLoss(), batch_size=32, epochs=2, precision=precision)


def test_fit_trains_in_bf16_when_the_task_asks_and_validates_in_full_precision():
    t = task("bf16")
    result = fit(t)
    assert t.model.seen[True] == {torch.bfloat16} and t.model.seen[False] == {torch.float32}
    assert result.val_losses[-1] < 1.1  # it learnt (chance: ln 3 = 1.10)
    plain = task("fp32")
    fit(plain)
    assert plain.model.seen[True] == {torch.float32}


def test_the_range_test_and_a_short_run_train_in_the_task_s_precision():
    t = task("bf16")
    find_lr(t, num_steps=20)
    assert t.model.seen[True] == {torch.bfloat16}
    t.model.seen[True].clear()
    run = local_run(t, Setting(0.01, 32), seed=0, weights=model_state(t.model))
    run.advance(4)
    run.branch(1)
    assert t.model.seen[True] == {torch.bfloat16} and t.model.seen[False] == {torch.float32}


def test_an_fp16_step_whose_gradients_overflow_is_skipped_and_told():
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = scaler_for(torch.device("cpu"), "fp16")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scale = float(scaler.get_scale())
    x = torch.randn(4, 2)
    parts = StepParts(model, opt, None, lambda m, b: m(b[0]).sum() * float("inf"), torch.device("cpu"),
                      item_counter(None, None), precision="fp16", scaler=scaler)
    optimizer_step(parts, [(x, torch.zeros(4, 1))])
    assert skipped(scaler, scale) and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    scale = float(scaler.get_scale())
    parts = StepParts(model, opt, nn.MSELoss(), None, torch.device("cpu"), item_counter(nn.MSELoss(), None),
                      precision="fp16", scaler=scaler)
    optimizer_step(parts, [(x, torch.zeros(4, 1))])
    assert not skipped(scaler, scale) and not torch.equal(before["weight"], model.weight)


def test_an_unknown_precision_is_one_line():
    with pytest.raises(GradpilotError, match=r"Task\.precision must be one of fp32, bf16, fp16"):
        dataclasses.replace(task("fp32"), precision="fp8")
    with pytest.raises(GradpilotError, match="precision must be one of"):
        fit(task("fp32"), precision="half")
