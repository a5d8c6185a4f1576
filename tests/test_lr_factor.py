"""lr_factor: the one LR function, step for step transformers' warmup-stable-decay."""

import pytest
import torch
from transformers import get_wsd_schedule

from gradpilot.schedules import factor as lr_factor


@pytest.mark.parametrize("decay_type", ["linear", "cosine", "1-sqrt"])
def test_wsd_is_transformers_warmup_stable_decay(decay_type):
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    theirs = get_wsd_schedule(opt, num_warmup_steps=3, num_decay_steps=5, num_stable_steps=4, min_lr_ratio=0.1,
                              decay_type=decay_type)
    lrs = []
    for _ in range(15):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        theirs.step()
    ours = [lr_factor.wsd(i, warmup=3, stable=4, decay=5, min_ratio=0.1, decay_type=decay_type) for i in range(15)]
    assert ours == pytest.approx(lrs, abs=1e-12)


def test_warmup_by_hand():
    assert [lr_factor.warmup(i, 4) for i in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor.wsd(10**9) == 1.0  # no decay asked: the stable phase goes on
    # transformers' warmup_stable_decay rises from its floor; its cosine_with_min_lr from 0
    assert lr_factor.wsd(1, warmup=4, stable=0, decay=4, min_ratio=0.2) == pytest.approx(0.25 * 0.8 + 0.2)
    assert lr_factor.wsd(1, warmup=4, stable=0, decay=4, min_ratio=0.2, warmup_from_floor=False) == 0.25


def test_a_branch_decays_a_constant_schedule_from_where_it_stands():
    trunk = lr_factor.Wsd(warmup=2)
    assert trunk.steps == lr_factor.FOREVER and trunk.training_arguments() == {
        "lr_scheduler_type": "constant_with_warmup", "lr_scheduler_kwargs": {}, "warmup_steps": 2}
    branch = trunk.decayed_from(10, 4, "linear")
    assert branch == lr_factor.Wsd(2, 8, 4, 0.0, "linear") and branch.steps == 14
    assert [branch.factor(i) for i in (9, 10, 11, 12, 13, 14)] == [1.0, 1.0, 0.75, 0.5, 0.25, 0.0]  # by hand
    assert trunk.decayed_from(10, 0, "linear") is trunk  # no decay: the schedule as it was
    assert trunk.decayed_from(1, 4, "linear") == lr_factor.Wsd(1, 0, 4)  # inside the warmup: it ends there
    assert branch.training_arguments() == {
        "lr_scheduler_type": "warmup_stable_decay", "warmup_steps": 2,
        "lr_scheduler_kwargs": {"num_decay_steps": 4, "decay_type": "linear", "min_lr_ratio": 0.0}}
