import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from gradpilot import GradpilotError, Monitor, fit
from gradpilot.train.state import Snapshot
from tests.conftest import classification, mlp, regression


def loader(data, batch=32):
    return DataLoader(data, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))


def test_one_call_per_step_from_a_users_own_loop():
    seen = []
    monitor = Monitor(check_every=10, on_finding=seen.append)
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.6)
    step = 0
    for _ in range(3):
        for x, y in loader(regression(512)):
            opt.zero_grad()
            loss = nn.functional.mse_loss(m(x), y)
            loss.backward()
            opt.step()
            step += 1
            new = monitor.update(step, loss, lr=0.6)  # a tensor: read only at the checks
            if new:
                assert step % 10 == 0
    assert [f.kind for f in seen] == ["nan"] == [f.kind for f in monitor.findings]  # raised once, not every check
    assert monitor.diagnosis().lr_verdict == "too high"
    assert len(monitor.history().train_loss) == step


def test_autopilot_recovers_a_run_that_would_diverge():
    results = {}
    for autopilot in (False, True):
        m = mlp()
        monitor = Monitor(check_every=10, autopilot=autopilot)
        results[autopilot] = fit(m, torch.optim.SGD(m.parameters(), lr=0.6), nn.MSELoss(), loader(regression(512)),
                                 epochs=6, val_loader=loader(regression(256, 1)), monitor=monitor)
    assert not math.isfinite(results[False].val_losses[-1])  # without it the run is lost
    saved = results[True]
    assert math.isfinite(saved.val_losses[-1]) and saved.val_losses[-1] < 0.5
    first = saved.actions[0]
    assert first.kind == "nan" and "rolled back to step" in first.description and "lr 0.6 → 0.18" in first.description
    assert saved.lrs[-1] <= 0.18
    assert "nan" in {f.kind for f in saved.findings}


def test_autopilot_lowers_the_lr_on_oscillation_through_a_schedule():
    m = mlp(2, 64)
    monitor = Monitor(check_every=10, autopilot=True, lr_factor_oscillation=0.25)
    result = fit(m, torch.optim.Adam(m.parameters(), lr=0.3), nn.CrossEntropyLoss(), loader(classification(1024)),
                 epochs=4, scheduler="cosine", monitor=monitor)
    osc = [a for a in result.actions if a.kind == "oscillation"]
    assert osc
    before, after = (float(v) for v in osc[0].description.split("lr ")[1].split(" → "))
    assert after == pytest.approx(before * 0.25, rel=0.01)
    assert max(result.lrs[osc[0].step:]) <= before * 0.25 * 1.01  # the cosine schedule kept the lowered LR


def test_autopilot_stops_on_overfitting_and_restores_the_best_weights():
    m = mlp(2, 256, depth=2)
    monitor = Monitor(check_every=10, autopilot=True)
    result = fit(m, torch.optim.Adam(m.parameters(), lr=1e-3), nn.CrossEntropyLoss(),
                 loader(classification(64, 0, flip=0.3), 16), epochs=40,
                 val_loader=loader(classification(512, 1), 256), monitor=monitor)
    assert result.stop_reason.startswith("autopilot stopped at epoch") and result.epochs_completed < 40
    assert result.actions[-1].kind == "overfitting" and result.restored_best


def test_snapshot_and_arguments():
    m = nn.Linear(2, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    snap = Snapshot()
    assert not snap.restore(m, opt)
    snap.take(3, m, opt)
    before = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(1.0)
    assert snap.restore(m, opt) and torch.equal(m.weight, before) and snap.step == 3
    for kwargs, message in (({"check_every": 0}, "check_every"), ({"lr_factor_oscillation": 1.5}, "lr_factor_oscillation"),
                            ({"lr_factor_divergence": 0}, "lr_factor_divergence")):
        with pytest.raises(GradpilotError, match=message):
            Monitor(**kwargs)


def test_a_saved_optimizer_state_is_loaded_with_the_optimizer_s_own_lrs_and_a_foreign_one_refused():
    from gradpilot.train.state import load_keeping_lrs

    m = nn.Linear(2, 1)
    saved_opt = torch.optim.Adam(m.parameters(), lr=0.5)
    m(torch.ones(4, 2)).sum().backward()
    saved_opt.step()
    saved = saved_opt.state_dict()
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    load_keeping_lrs(opt, saved)
    assert opt.param_groups[0]["lr"] == 0.01  # the run's LR, not the 0.5 saved
    assert int(opt.state[m.weight]["step"]) == 1 and torch.equal(opt.state[m.weight]["exp_avg"],
                                                                saved["state"][0]["exp_avg"])
    opt.step()
    assert int(saved["state"][0]["step"]) == 1  # a copy was loaded: the saved state is untouched
    other = torch.optim.Adam(nn.Linear(3, 1).parameters(), lr=0.01)
    with pytest.raises(GradpilotError, match="does not fit the trainer's optimizer"):
        load_keeping_lrs(other, saved)
