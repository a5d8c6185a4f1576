
import contextlib

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradpilot import GradpilotError, fit
from gradpilot.train.accumulation import item_counter, micro_weights, windows
from tests.conftest import Tagger, padded_sequences
from tests.conftest import double_classification as classification
from tests.conftest import double_mlp as mlp


def train(model, loader, k, epochs=1, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return fit(model, opt, kw.pop("loss_fn", nn.CrossEntropyLoss()), loader, epochs=epochs, accumulation_steps=k, **kw)


def assert_same_params(a, b, tol=1e-6):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=tol, rtol=0), name


def test_micro_batches_equal_the_large_batch_for_mean_losses():
    small, large = mlp(), mlp()
    r_small = train(small, DataLoader(classification(64), batch_size=8), k=4, epochs=2)
    r_large = train(large, DataLoader(classification(64), batch_size=32), k=1, epochs=2)
    assert_same_params(small, large)
    assert r_small.steps == r_large.steps == 4
    assert r_small.train_losses == pytest.approx(r_large.train_losses, abs=1e-12)
    assert r_small.effective_batch_size == r_large.effective_batch_size == 32


def test_short_last_window_and_short_last_batch_are_stepped_with_their_weight():
    # 60 items, micro 8: batches 8,8,8,8 | 8,8,8,4 -> windows of 32 and 28 items, like large batches of 32
    small, large = mlp(), mlp()
    r = train(small, DataLoader(classification(60), batch_size=8), k=4, epochs=3)
    train(large, DataLoader(classification(60), batch_size=32), k=1, epochs=3)
    assert_same_params(small, large)
    assert r.steps == 6  # 2 windows per epoch, never mixed across epochs
    # 10 batches with k=4 -> windows 4, 4, 2 batches: the last short window is stepped too
    small, large = mlp(), mlp()
    r = train(small, DataLoader(classification(80), batch_size=8), k=4)
    train(large, DataLoader(classification(80), batch_size=32), k=1)
    assert r.steps == 3
    assert_same_params(small, large)


def test_ignore_index_tokens_are_weighted_by_their_count_not_one_over_k():
    loss = nn.CrossEntropyLoss(ignore_index=-100)
    small, large = Tagger(), Tagger()
    train(small, DataLoader(padded_sequences(), batch_size=4), k=4, loss_fn=loss)
    train(large, DataLoader(padded_sequences(), batch_size=16), k=1, loss_fn=loss)
    assert_same_params(small, large)
    # the naive 1/k average really differs here, so the test above can fail
    naive = Tagger()
    opt = torch.optim.SGD(naive.parameters(), lr=0.1, momentum=0.9)
    for start in (0, 16):
        for i in range(4):
            x, y = padded_sequences()[start + 4 * i:start + 4 * i + 4]
            (loss(naive(x), y) / 4).backward()
        opt.step()
        opt.zero_grad()
    assert max((p - q).abs().max().item() for p, q in zip(naive.parameters(), large.parameters())) > 1e-4


def test_user_num_items_for_a_masked_loss():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(48, 6, dtype=torch.float64, generator=gen)
    y = torch.randn(48, 3, dtype=torch.float64, generator=gen)
    mask = (torch.rand(48, 3, generator=gen) > 0.6).double()
    data = TensorDataset(x, y, mask)

    def step_fn(model, batch):
        xb, yb, mb = batch
        return ((model(xb) - yb).pow(2) * mb).sum() / mb.sum()

    def num_items(batch):
        return batch[2].sum()

    results = []
    for bs, k in ((6, 4), (24, 1)):
        model = mlp()
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        fit(model, opt, None, DataLoader(data, batch_size=bs), epochs=2, accumulation_steps=k, step_fn=step_fn,
            num_items=num_items)
        results.append(model)
    assert_same_params(*results)


def test_windows_and_weights_are_plain_arithmetic():
    assert [len(w) for w in windows(range(10), 4)] == [4, 4, 2]
    assert micro_weights([8, 8, 8, 4]) == pytest.approx([8 / 28, 8 / 28, 8 / 28, 4 / 28])
    assert sum(micro_weights([3, 5])) == pytest.approx(1.0)
    count = item_counter(nn.CrossEntropyLoss(ignore_index=0), None)
    assert int(count((torch.zeros(3, 2), torch.tensor([[0, 1], [2, 0], [0, 0]])))) == 2
    assert item_counter(nn.MSELoss(), None)((torch.zeros(5, 2), torch.zeros(5, 1))) == 5
    assert item_counter(None, lambda _b: 7)(object()) == 7


def test_uncountable_batches_and_non_mean_losses_are_clear_errors():
    count = item_counter(None, None)
    with pytest.raises(GradpilotError, match="pass num_items"):
        count({"text": "hello"})
    with pytest.raises(GradpilotError, match="mean-reduced loss"):
        item_counter(nn.CrossEntropyLoss(reduction="sum"), None)


def test_accumulation_steps_below_one_fails_at_once():
    model = mlp()
    with pytest.raises(GradpilotError, match="accumulation_steps must be a positive whole number"):
        train(model, DataLoader(classification(16), batch_size=8), k=0)


@pytest.mark.parametrize(("loss_fn", "batch", "expected"), [
    (nn.CrossEntropyLoss(), (torch.zeros(4, 3), torch.tensor([0, 1, -100, 2])), 3),  # ignore_index counted out
    (nn.NLLLoss(ignore_index=0), (torch.zeros(4, 3), torch.tensor([0, 1, 0, 2])), 2),
    (nn.CrossEntropyLoss(), (torch.zeros(4, 3), torch.full((4, 3), 1 / 3)), 4),  # soft labels: every row counts
    (nn.MSELoss(), (torch.zeros(5, 2), torch.zeros(5, 3)), 5),  # the first dimension, not the second
    (nn.MSELoss(), (torch.zeros(5, 2), torch.tensor(1.0)), 1),  # a single target
    (nn.MSELoss(), {"x": torch.zeros(6, 2), "labels": torch.zeros(6)}, 6),
    (None, [torch.zeros(7, 2), "no tensor targets"], 7),  # the inputs' first dimension
])
def test_item_counts_by_hand(loss_fn, batch, expected):
    assert int(item_counter(loss_fn, None)(batch)) == expected


def test_item_counter_refuses_what_it_cannot_count():
    with pytest.raises(GradpilotError, match="pass num_items"):
        item_counter(nn.MSELoss(), None)({"input_ids": torch.zeros(3, 4)})
    with pytest.raises(GradpilotError, match="mean-reduced loss"):
        item_counter(nn.CrossEntropyLoss(reduction="sum"), None)
    assert item_counter(nn.MSELoss(), lambda _b: 42)((torch.zeros(2), torch.zeros(2))) == 42


def test_accumulate_by_hand_against_one_backward():
    from gradpilot.train.accumulation import StepParts, accumulate

    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
    window = [(x[:2], y[:2]), (x[2:7], y[2:7]), (x[7:], y[7:])]  # 2, 5 and 3 items
    seen = []

    def sync_context(last):
        seen.append(last)
        return contextlib.nullcontext()

    parts = StepParts(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), None, torch.device("cpu"),
                      item_counter(nn.MSELoss(), None), sync_context=sync_context)
    loss = accumulate(parts, window)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    reference = nn.functional.mse_loss(model(x), y)  # the absolute reference: the whole batch at once
    reference.backward()
    assert seen == [False, False, True]  # DDP may sync on the last micro-batch only
    assert float(loss) == pytest.approx(reference.item(), rel=1e-12)
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-12, atol=0)
    model.zero_grad()
    one = accumulate(StepParts.assemble(model, parts.optimizer, loss_fn=nn.MSELoss()), window[:1])
    assert float(one) == pytest.approx(nn.functional.mse_loss(model(x[:2]), y[:2]).item(), rel=1e-12)
    assert model.weight.grad.abs().sum() > 0


@pytest.fixture
def one_process_group():
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.usefixtures("one_process_group")
def test_micro_weights_under_data_parallel():
    from gradpilot.train.distributed import comm_device

    assert comm_device() == torch.device("cpu")  # gloo communicates on the CPU
    # as if 2 processes: the items are summed over the group (here: this one), the shares times 2 because DDP
    # averages the processes' gradients
    assert [float(w) for w in micro_weights([2, 6], world_size=2)] == pytest.approx([0.5, 1.5])
    assert micro_weights([5]) == [1.0] and [float(w) for w in micro_weights([1, 3])] == [0.25, 0.75]
