"""lr_factor: the one LR function, step for step transformers' warmup-stable-decay."""

import pytest
import torch
from transformers import get_wsd_schedule

from gradpilot import lr_factor


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


def test_warmup_and_cooldown_by_hand():
    assert [lr_factor.warmup(i, 4) for i in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert [lr_factor.cooldown(i, 4) for i in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert lr_factor.wsd(10**9) == 1.0  # no decay asked: the stable phase goes on
