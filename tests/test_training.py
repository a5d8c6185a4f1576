import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradpilot import EarlyStopping, GradpilotError, fit
from gradpilot.examples import example_task
from gradpilot.train.fitting import evaluate


def data(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    return TensorDataset(x, (x.sum(1, keepdim=True) > 0).float())


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def test_fit_a_task_trains_and_reports_its_history():
    task = example_task(0)
    before = evaluate(task.model, task.val_loader(), task.loss_fn, task.metric)
    result = fit(task, epochs=3)
    steps = 3 * len(task.train_loader())
    assert result.steps == len(result.train_losses) == len(result.lrs) == steps
    assert len(result.val_metrics) == result.epochs_completed == 3
    assert result.val_metrics[-1] > before + 0.1  # accuracy went up
    assert result.best_epoch == 1 + max(range(3), key=lambda i: result.val_metrics[i])
    assert result.best_metric == max(result.val_metrics)
    assert result.stop_reason == "completed 3 epochs" and result.effective_batch_size == 64
    per_epoch = len(task.train_loader())
    assert result.epoch_steps == (per_epoch, 2 * per_epoch, 3 * per_epoch)
    assert len(result.val_losses) == 3 and result.val_losses[-1] < result.val_losses[0]  # the loss alongside the metric
    assert result.val_losses[-1] == evaluate(task.model, task.val_loader(), task.loss_fn)
    assert result.resumed_from_step is None and not result.restored_best


def scripted_run(values, stopping, higher_is_better=False):
    net = model()
    seen = []
    epoch = {"i": 0}

    def metric(_outputs, _targets):
        return values[epoch["i"]]

    def on_step(step, _lr):
        if step % 2 == 0:  # 2 steps per epoch: the epoch just ended, record its weights for the check
            seen.append({k: v.clone() for k, v in net.state_dict().items()})
            epoch["i"] = step // 2 - 1

    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loader = DataLoader(data(64), batch_size=32)
    val = DataLoader(data(8, seed=1), batch_size=8)
    result = fit(net, opt, nn.BCEWithLogitsLoss(), loader, epochs=len(values), val_loader=val, metric=metric,
                 higher_is_better=higher_is_better, early_stopping=stopping, on_step=on_step)
    return net, seen, result


def test_early_stopping_stops_and_restores_the_best_weights():
    net, seen, result = scripted_run([3.0, 2.0, 1.0, 1.5, 2.5, 0.5, 0.1], EarlyStopping(patience=2))
    assert result.epochs_completed == 5 and result.best_epoch == 3
    assert "early stopping at epoch 5" in result.stop_reason and "epoch 3" in result.stop_reason
    assert result.restored_best
    for k, v in net.state_dict().items():
        assert torch.equal(v, seen[2][k])  # the weights of epoch 3, not of epoch 5


def test_min_delta_and_mode():
    # improvements of 0.05 are not larger than min_delta=0.1: epoch 1 stays best
    _, _, result = scripted_run([1.0, 0.95, 0.9, 0.85], EarlyStopping(patience=2, min_delta=0.1))
    assert result.epochs_completed == 3 and result.best_epoch == 1
    _, _, result = scripted_run([0.1, 0.5, 0.4, 0.3], EarlyStopping(patience=2, mode="max"))
    assert result.best_epoch == 2 and result.epochs_completed == 4
    _, _, result = scripted_run([0.1, 0.5, 0.4, 0.3, 0.2], EarlyStopping(patience=2), higher_is_better=True)
    assert result.best_epoch == 2 and result.epochs_completed == 4


def test_max_grad_norm_on_step_and_device():
    net = model()
    start = [p.clone() for p in net.parameters()]
    calls = []
    fit(net, torch.optim.SGD(net.parameters(), lr=1.0), nn.BCEWithLogitsLoss(), DataLoader(data(), batch_size=16),
        epochs=1, max_grad_norm=1e-6, device="cpu", on_step=lambda step, lr: calls.append((step, lr)))
    moved = sum((p - q).norm() ** 2 for p, q in zip(net.parameters(), start)) ** 0.5
    assert moved <= 4 * 1e-6 + 1e-7  # four steps of at most lr * 1e-6 each
    assert calls == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0)]


def test_validation_on_dict_batches_and_on_the_loss():
    class DictData(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            x, y = data(16)[i]
            return {"x": x, "labels": y}

    class DictModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model()

        def forward(self, x):
            return self.net(x)

    net = DictModel()
    loader = DataLoader(DictData(), batch_size=4)
    acc = lambda out, y: ((out > 0).float() == y).float().mean().item()
    result = fit(net, torch.optim.Adam(net.parameters(), lr=0.01), nn.BCEWithLogitsLoss(), loader, epochs=2,
                 val_loader=loader, metric=acc, higher_is_better=True)
    assert all(0 <= v <= 1 for v in result.val_metrics)
    loss = evaluate(net, loader, nn.BCEWithLogitsLoss())
    assert loss == pytest.approx(evaluate(net, DataLoader(DictData(), batch_size=16), nn.BCEWithLogitsLoss()), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be a positive whole number"),
        ({"epochs": 1, "checkpoint_every": 0}, "checkpoint_every"),
        ({"epochs": 1, "early_stopping": EarlyStopping()}, "pass val_loader"),
        ({"epochs": 1, "max_grad_norm": 0.0}, "max_grad_norm"),
    ],
)
def test_bad_fit_arguments_fail_at_once(kwargs, message):
    net = model()
    with pytest.raises(GradpilotError, match=message):
        fit(net, torch.optim.SGD(net.parameters(), lr=0.1), nn.MSELoss(), DataLoader(data(), batch_size=8), **kwargs)


def test_missing_optimizer_or_empty_loader():
    with pytest.raises(GradpilotError, match="needs an optimizer"):
        fit(model(), None, nn.MSELoss(), DataLoader(data()), epochs=1)
    net = model()
    empty = DataLoader(TensorDataset(torch.zeros(0, 4), torch.zeros(0, 1)))
    with pytest.raises(GradpilotError, match="yields no batches"):
        fit(net, torch.optim.SGD(net.parameters(), lr=0.1), nn.MSELoss(), empty, epochs=1)


def frozen_model():
    net = model()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": float("nan")}, "epochs must be a positive whole number, got epochs=nan"),
        ({"epochs": 2.5}, "epochs must be a positive whole number, got epochs=2.5"),
        ({"epochs": True}, "epochs must be a positive whole number"),
        ({"epochs": 1, "accumulation_steps": 2.5}, "accumulation_steps must be a positive whole number"),
        ({"epochs": 1, "max_grad_norm": float("nan")}, "max_grad_norm must be a positive finite number"),
        ({"epochs": 1, "max_grad_norm": float("inf")}, "max_grad_norm must be a positive finite number"),
        ({"epochs": 1, "checkpoint_every": 1.5}, "checkpoint_every must be a positive whole number"),
        ({"epochs": 1, "val_loader": DataLoader(TensorDataset(torch.zeros(0, 4), torch.zeros(0, 1)))},
         "val_loader yields no batches"),
    ],
)
def test_nonsense_numbers_are_refused_before_any_step(kwargs, message):
    net, steps = model(), []
    with pytest.raises(GradpilotError, match=message):
        fit(net, torch.optim.SGD(net.parameters(), lr=0.1), nn.MSELoss(), DataLoader(data(), batch_size=8),
            on_step=lambda s, _lr: steps.append(s), **kwargs)
    assert steps == []


def test_an_optimizer_that_cannot_train_the_model_is_refused():
    net = model()
    with pytest.raises(GradpilotError, match="holds none of the model's parameters"):
        fit(net, torch.optim.SGD(model().parameters(), lr=0.1), nn.MSELoss(), DataLoader(data()), epochs=1)
    net = frozen_model()
    with pytest.raises(GradpilotError, match="frozen model"):
        fit(net, torch.optim.SGD(net.parameters(), lr=0.1), nn.MSELoss(), DataLoader(data()), epochs=1)


def test_a_task_never_overrides_what_the_caller_passed():
    task = example_task(0)
    with pytest.raises(GradpilotError, match="epochs must be a positive whole number, got epochs=0"):
        fit(task, epochs=0)
    with pytest.raises(GradpilotError, match="train_loader yields no batches"):
        fit(task, train_loader=[])  # an empty loader of the user's is not swapped for the task's
    result = fit(task, epochs=1, metric=lambda _out, _y: 7.0)
    assert result.val_metrics == (7.0,) and result.best_epoch == 1


def test_effective_batch_size_with_a_batch_sampler():
    from torch.utils.data import BatchSampler, SequentialSampler

    class Buckets(torch.utils.data.Sampler):  # length bucketing: batches of uneven size, no batch_size attribute
        def __iter__(self):
            return iter([list(range(10)), list(range(10, 16)), list(range(16, 32))])

        def __len__(self):
            return 3

    net = model()
    result = fit(net, torch.optim.SGD(net.parameters(), lr=0.1), nn.MSELoss(),
                 DataLoader(data(32), batch_sampler=Buckets()), epochs=1, accumulation_steps=3)
    assert result.effective_batch_size == 32  # 32 items in 3 batches: about 11 per batch × 3
    sampler = BatchSampler(SequentialSampler(range(32)), batch_size=8, drop_last=False)
    result = fit(net, torch.optim.SGD(net.parameters(), lr=0.1), nn.MSELoss(),
                 DataLoader(data(32), batch_sampler=sampler), epochs=1, accumulation_steps=2)
    assert result.effective_batch_size == 16


def test_evaluate_with_step_fn_and_metric_runs_one_forward_per_batch():
    net, calls = model(), []
    net.register_forward_hook(lambda *_a: calls.append(1))
    loader = DataLoader(data(32), batch_size=8)

    def step_fn(m, batch):
        return nn.functional.mse_loss(m(batch[0]), batch[1]) * 2  # the user's own loss

    loss = evaluate(net, loader, None, None, step_fn=step_fn)
    calls.clear()
    value = evaluate(net, loader, None, lambda out, y: float((out - y).abs().mean()), step_fn=step_fn)
    assert len(calls) == 4  # 4 batches, one forward each
    with torch.no_grad():  # the absolute reference, by hand
        x, y = data(32).tensors
        out = net(x)
    assert value == pytest.approx(float((out - y).abs().mean()), rel=1e-6)
    assert loss == pytest.approx(2 * float(nn.functional.mse_loss(out, y)), rel=1e-6)


def test_evaluate_a_task_uses_its_validation_data_and_metric():
    task = example_task(0)
    value = evaluate(task)
    x, y = task.val_data.tensors  # the absolute reference, by hand over all 1,024 items
    with torch.no_grad():
        by_hand = (task.model(x).argmax(-1) == y).float().mean().item()
    assert value == pytest.approx(by_hand, abs=1e-6)
    with pytest.raises(GradpilotError, match="needs a loader"):
        evaluate(task.model)


def test_fit_equals_a_ten_line_loop_written_by_hand():
    """The absolute reference the differential tests (accumulation, DDP) lean on."""
    torch.manual_seed(0)
    by_fit, by_hand = model(), model()
    loader = DataLoader(data(64), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(3))
    opt = torch.optim.SGD(by_fit.parameters(), lr=0.1, momentum=0.9)
    result = fit(by_fit, opt, nn.BCEWithLogitsLoss(), loader, epochs=2)
    hand_opt = torch.optim.SGD(by_hand.parameters(), lr=0.1, momentum=0.9)
    losses = []
    hand_loader = DataLoader(data(64), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(3))
    for _ in range(2):
        for x, y in hand_loader:
            loss = nn.functional.binary_cross_entropy_with_logits(by_hand(x), y)
            loss.backward()
            hand_opt.step()
            hand_opt.zero_grad()
            losses.append(loss.item())
    for p, q in zip(by_fit.parameters(), by_hand.parameters()):
        assert torch.equal(p, q)
    assert list(result.train_losses) == pytest.approx(losses, abs=1e-7)


def test_every_fit_keyword_is_a_fit_config_field_with_the_same_default():
    """fit builds FitConfig from its own arguments (``locals()``): a keyword added to one and not the other, or a
    default that differs, would be lost or refused without this."""
    import dataclasses
    import inspect

    from gradpilot.train.fitting import FitConfig

    params = dict(inspect.signature(fit).parameters)
    own = ["lr", "plan", "seed"]  # a Task's: what its optimizer, data and schedule are made at
    assert list(params) == ["model", *[f.name for f in dataclasses.fields(FitConfig)], *own]
    for f in dataclasses.fields(FitConfig):
        default = f.default if f.default is not dataclasses.MISSING else None  # None in fit: "from the task"
        if f.default_factory is not dataclasses.MISSING or f.name == "accumulation_steps":
            default = None  # fit's None is FitConfig's {} (scheduler_options) or 1 (accumulation_steps), or the plan's
        assert params[f.name].default == default, f.name
