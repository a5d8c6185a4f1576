import copy
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradpilot import GradpilotError, find_lr
from gradpilot.examples import example_task


def regression_data(n: int = 256, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    y = x @ torch.randn(8, 1, generator=gen) + 0.1 * torch.randn(n, 1, generator=gen)
    return TensorDataset(x, y)


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))


def snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "opt": copy.deepcopy(opt.state_dict()),
        "rng": torch.random.get_rng_state(),
    }


def assert_same_opt_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for name, value in a["state"][k].items():
            other = b["state"][k][name]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other


def test_restores_model_optimizer_modes_grads_and_rng_bit_for_bit():
    model = bn_model()
    opt = torch.optim.Adam(
        [{"params": model[0].parameters(), "lr": 1e-3}, {"params": [*model[1].parameters(), *model[4].parameters()], "lr": 5e-4}]
    )
    loader = DataLoader(regression_data(), batch_size=32, shuffle=True)
    # give the optimizer real state and the parameters live gradients, then freeze one submodule's mode
    x, y = next(iter(loader))
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    nn.functional.mse_loss(model(x), y).backward()
    model[3].eval()
    before = snapshot(model, opt)

    result = find_lr(model, opt, nn.MSELoss(), loader, num_steps=60)

    after = snapshot(model, opt)
    assert len(result.lrs) > 10
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k  # includes BatchNorm running stats
    for n, g in before["grads"].items():
        assert torch.equal(g, after["grads"][n]), n
    assert before["modes"] == after["modes"]
    assert_same_opt_state(before["opt"], after["opt"])
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 5e-4]
    assert torch.equal(before["rng"], after["rng"])


def test_fresh_optimizer_gets_no_state_left_behind():
    model = bn_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    find_lr(model, opt, nn.MSELoss(), DataLoader(regression_data(), batch_size=32), num_steps=20)
    assert opt.state_dict()["state"] == {}
    assert all(p.grad is None for p in model.parameters())


def test_exponential_sweep_and_param_group_ratios():
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD([{"params": [model.weight], "lr": 1.0}, {"params": [model.bias], "lr": 0.1}])
    seen = []
    original_step = opt.step

    def recording_step(*args, **kwargs):
        seen.append([g["lr"] for g in opt.param_groups])
        return original_step(*args, **kwargs)

    opt.step = recording_step
    result = find_lr(model, opt, nn.MSELoss(), DataLoader(regression_data(), batch_size=32),
                     start_lr=1e-6, end_lr=1e-2, num_steps=21, smoothing=0.0)
    assert result.lrs[0] == pytest.approx(1e-6)
    assert result.lrs[-1] == pytest.approx(1e-2)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:])]
    assert ratios == pytest.approx([10 ** 0.2] * 20)
    assert all(b == pytest.approx(a / 10) for a, b in seen)
    # smoothing=0 means the smoothed curve is the raw one
    assert result.smoothed_losses == pytest.approx(result.losses)


def test_stops_on_divergence_and_reports_it():
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = find_lr(model, opt, nn.MSELoss(), DataLoader(regression_data(), batch_size=64), num_steps=100)
    assert result.stopped_early
    assert "diverged" in result.stop_reason
    assert len(result.lrs) < 100
    assert result.lrs[-1] < 10


def test_lower_diverge_threshold_stops_sooner():
    data = DataLoader(regression_data(), batch_size=64)
    runs = []
    for threshold in (1.5, 10.0):
        model = nn.Linear(8, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        runs.append(find_lr(model, opt, nn.MSELoss(), data, diverge_threshold=threshold))
    assert len(runs[0].lrs) < len(runs[1].lrs)


class NanAfter(nn.Module):
    """A linear model whose output turns NaN once its weights have moved far from where they started."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 1)
        self.start = self.lin.weight.detach().clone()

    def forward(self, x):
        out = self.lin(x)
        if (self.lin.weight - self.start).abs().max() > 0.5:
            out = out * float("nan")
        return out


def test_survives_nan_and_restores_state():
    model = NanAfter()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = find_lr(model, opt, nn.MSELoss(), DataLoader(regression_data(), batch_size=32), num_steps=100,
                     diverge_threshold=1e9)
    assert result.stopped_early
    assert "nan" in result.stop_reason
    assert math.isnan(result.losses[-1])
    assert len(result.smoothed_losses) == len(result.lrs) - 1
    assert math.isfinite(result.suggestion)
    for k, v in before.items():
        assert torch.equal(v, model.state_dict()[k])


def test_nan_from_the_first_step_is_a_clear_error():
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bad = lambda out, y: (out - y).pow(2).mean() * float("nan")
    with pytest.raises(GradpilotError, match=r"first step, before any learning rate acted.*the data, the loss"):
        find_lr(model, opt, bad, DataLoader(regression_data(), batch_size=32))  # never "lower start_lr"


class DictModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 1)

    def forward(self, features, scale=None):
        return self.lin(features) * (1.0 if scale is None else scale)


class DictDataset(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.data = regression_data(64)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return {"features": x, "labels": y}


def test_dict_batches_with_labels_key():
    model = DictModel()
    opt = torch.optim.Adam(model.parameters())
    result = find_lr(model, opt, nn.MSELoss(), DataLoader(DictDataset(), batch_size=16), num_steps=30)
    assert len(result.lrs) > 10 and math.isfinite(result.suggestion)


@dataclass
class Output:
    loss: torch.Tensor


class SelfLossModel(nn.Module):
    """Computes its own loss from the batch, as Hugging Face models do when given labels."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 1)

    def forward(self, features, labels):
        return Output(loss=nn.functional.mse_loss(self.lin(features), labels))


def test_dict_batches_where_the_model_returns_its_own_loss():
    model = SelfLossModel()
    opt = torch.optim.Adam(model.parameters())
    result = find_lr(model, opt, None, DataLoader(DictDataset(), batch_size=16), num_steps=30)
    assert len(result.lrs) > 10


def test_step_fn_handles_any_batch_shape():
    data = regression_data(64)
    weights = torch.rand(64)
    loader = DataLoader(TensorDataset(data.tensors[0], data.tensors[1], weights), batch_size=16)
    calls = []

    def step_fn(model, batch):
        x, y, w = batch
        calls.append(len(x))
        return ((model(x) - y).pow(2).squeeze(1) * w).mean()

    model = nn.Linear(8, 1)
    find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), None, loader, step_fn=step_fn, num_steps=12)
    assert len(calls) >= 10


def test_accumulation_steps_use_k_batches_per_step_and_wrap_around_a_short_loader():
    counted = []

    class Counting(torch.utils.data.Dataset):
        def __len__(self):
            return 48  # three batches of 16: far fewer than the sweep needs

        def __getitem__(self, i):
            counted.append(i)
            return regression_data(48)[i]

    model = nn.Linear(8, 1)
    result = find_lr(model, torch.optim.Adam(model.parameters()), nn.MSELoss(), DataLoader(Counting(), batch_size=16),
                     num_steps=15, accumulation_steps=3, end_lr=1e-2)
    assert len(result.lrs) == 15
    assert len(counted) == 15 * 3 * 16


def test_device_argument_moves_batches(monkeypatch):
    import gradpilot.lr.range_test
    import gradpilot.train.accumulation

    moved = []
    real = gradpilot.train.accumulation.to_device
    monkeypatch.setattr(gradpilot.train.accumulation, "to_device", lambda b, d: (moved.append(d), real(b, d))[1])
    monkeypatch.setattr(gradpilot.train.accumulation, "model_device", lambda _model: torch.device("meta"))  # its own
    model = nn.Linear(8, 1)
    result = find_lr(model, torch.optim.Adam(model.parameters()), nn.MSELoss(),
                     DataLoader(regression_data(), batch_size=32), device="cpu", num_steps=15)
    assert len(result.lrs) == 15 and len(moved) == 15 and set(moved) == {torch.device("cpu")}


def test_rule_selects_the_suggestion_and_all_rules_are_reported():
    task = example_task(0)
    result = find_lr(task.model, task.make_optimizer(), task.loss_fn, task.train_loader(), rule="minimum/10")
    assert result.rule == "minimum/10"
    assert result.suggestion == result.alternatives["minimum/10"]
    assert {"steepest", "valley", "minimum/10"} <= set(result.alternatives)


def test_progress_callback_sees_every_step():
    ticks = []
    model = nn.Linear(8, 1)
    find_lr(model, torch.optim.Adam(model.parameters()), nn.MSELoss(), DataLoader(regression_data(), batch_size=32),
            num_steps=12, end_lr=1e-3, progress=lambda step, total, _lr, _loss: ticks.append((step, total)))
    assert ticks == [(i, 12) for i in range(1, 13)]


def test_plot_writes_an_image(tmp_path):
    model = nn.Linear(8, 1)
    result = find_lr(model, torch.optim.Adam(model.parameters()), nn.MSELoss(),
                     DataLoader(regression_data(), batch_size=32), num_steps=20)
    path = result.plot(tmp_path / "sub" / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start_lr": 1.0, "end_lr": 0.1}, "start_lr must be below end_lr"),
        ({"start_lr": 0.0}, "positive finite"),
        ({"num_steps": 3}, "num_steps"),
        ({"accumulation_steps": 0}, "accumulation_steps"),
        ({"diverge_threshold": 1.0}, "diverge_threshold"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"rule": "magic"}, "unknown suggestion rule 'magic'"),
    ],
)
def test_bad_arguments_fail_fast_with_a_clear_message(kwargs, message):
    model = nn.Linear(8, 1)
    with pytest.raises(GradpilotError, match=message):
        find_lr(model, torch.optim.Adam(model.parameters()), nn.MSELoss(), DataLoader(regression_data()), **kwargs)


def test_empty_loader_is_a_clear_error():
    model = nn.Linear(8, 1)
    empty = DataLoader(TensorDataset(torch.zeros(0, 8), torch.zeros(0, 1)))
    with pytest.raises(GradpilotError, match="yielded no batches"):
        find_lr(model, torch.optim.Adam(model.parameters()), nn.MSELoss(), empty)


def test_non_scalar_loss_is_a_clear_error():
    model = nn.Linear(8, 1)
    with pytest.raises(GradpilotError, match=r"must be a scalar.*reduction='mean'"):
        find_lr(model, torch.optim.Adam(model.parameters()), nn.MSELoss(reduction="none"),
                DataLoader(regression_data(), batch_size=8))


def test_family_is_read_from_the_optimizer_and_can_be_overridden():
    task = example_task(0)
    kwargs = {"num_steps": 60}
    adaptive = find_lr(task.model, task.make_optimizer(), task.loss_fn, task.train_loader(), **kwargs)
    as_sgd = find_lr(task.model, task.make_optimizer(), task.loss_fn, task.train_loader(), family="sgd", **kwargs)
    assert adaptive.alternatives["valley"] == as_sgd.alternatives["valley"]  # same curve
    assert adaptive.alternatives["descent-edge"] != as_sgd.alternatives["descent-edge"]  # the family is used
    with pytest.raises(GradpilotError, match="family must be 'sgd' or 'adaptive'"):
        find_lr(task.model, task.make_optimizer(), task.loss_fn, task.train_loader(), family="lbfgs")


def test_a_task_is_accepted_and_left_as_it_was():
    from gradpilot.examples import example_task

    task = example_task(0)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    result = find_lr(task, num_steps=20, end_lr=1.0)
    assert len(result.lrs) <= 20 and 1e-7 <= result.suggestion <= 1.0
    assert all(torch.equal(v, task.model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(GradpilotError, match="needs an optimizer and a train_loader"):
        find_lr(task.model)


def test_num_items_counts_what_gradpilot_cannot_when_accumulating():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    batches = [{"x": torch.randn(n, 4), "y_": torch.randn(n, 1)} for n in (2, 6) * 10]  # no key gradpilot knows
    step_fn = lambda m, b: nn.functional.mse_loss(m(b["x"]), b["y_"])
    kwargs = {"step_fn": step_fn, "accumulation_steps": 2, "num_steps": 10, "end_lr": 1e-3}
    with pytest.raises(GradpilotError, match="pass num_items"):
        find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), None, batches, **kwargs)
    result = find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), None, batches,
                     num_items=lambda b: len(b["x"]), **kwargs)
    # the first step, by hand: the 2- and 6-item batches weighted 2/8 and 6/8 — the mean over all 8 items
    x = torch.cat([batches[0]["x"], batches[1]["x"]])
    y = torch.cat([batches[0]["y_"], batches[1]["y_"]])
    with torch.no_grad():
        assert result.losses[0] == pytest.approx(nn.functional.mse_loss(model(x), y).item(), rel=1e-5)


def test_interval_confidence_and_safe_pick_on_a_real_model():
    from gradpilot.lr.suggest import MARGINS

    task = example_task(0)
    result = find_lr(task)
    low, high = result.interval
    assert result.rule == "safe-edge" and low < result.suggestion < high
    assert result.suggestion < result.edge * 10**-MARGINS.base  # kept below the edge of stability
    assert 0 <= result.confidence <= 1 and isinstance(result.caveat, str)
    # the spirals' grid optimum at 200 steps is 1e-2 (benchmarks/lr_suggestion.py): the interval holds it
    assert low < 1e-2 < high
    other = find_lr(task, rule="minimum/10")  # another rule's pick widens the interval to hold it
    assert other.interval[0] <= other.suggestion <= other.interval[1]


def test_momentum_pushes_the_safe_pick_further_below_the_edge():
    picks = {}
    for momentum in (0.0, 0.9):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
        loader = DataLoader(regression_data(), batch_size=16, shuffle=False)
        result = find_lr(model, opt, nn.MSELoss(), loader)
        picks[momentum] = math.log10(result.edge / result.suggestion)
    assert picks[0.9] > picks[0.0] > 0
