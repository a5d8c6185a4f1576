import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from gradpilot import GradpilotError, estimate_noise_scale, find_batch_size
from gradpilot.batch.finder import is_oom


class OOMAbove(nn.Module):
    """Raises a CUDA-style out-of-memory error (or ``error()``) for batches larger than ``limit``."""

    def __init__(self, limit: int, error=lambda: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")):
        super().__init__()
        self.limit, self.error = limit, error
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        if len(x) > self.limit:
            raise self.error()
        return self.lin(x)


def data(n=300):
    return TensorDataset(torch.randn(n, 4), torch.randint(0, 2, (n,)))


def test_simulated_oom_search_tries_the_expected_sizes_and_restores_state():
    model = OOMAbove(37)
    opt = torch.optim.Adam(model.parameters())
    before = copy.deepcopy(model.state_dict())
    seen = []
    result = find_batch_size(model, opt, nn.CrossEntropyLoss(), data(), progress=seen.append)
    assert result.batch_size == 37
    assert [t.batch_size for t in result.trials] == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
    assert seen == list(result.trials)
    failed = [t for t in result.trials if not t.fits]
    assert all("out of memory" in t.error and t.samples_per_second is None for t in failed)
    assert all(t.samples_per_second > 0 and t.peak_memory is not None for t in result.trials if t.fits)
    assert result.fastest in result.trials and result.fastest.fits
    for k, v in before.items():
        assert torch.equal(v, model.state_dict()[k])
    assert opt.state_dict()["state"] == {}


def test_a_real_memory_error_with_no_message_is_a_trial_that_did_not_fit():
    model = OOMAbove(20, error=MemoryError)  # what Python raises when the host runs out: MemoryError(), no text
    result = find_batch_size(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), data())
    assert result.batch_size == 20
    assert [t.batch_size for t in result.trials] == [1, 2, 4, 8, 16, 32, 24, 20, 22, 21]
    assert [t.error for t in result.trials if not t.fits] == ["MemoryError"] * 4  # 32, 24, 22, 21


def test_start_max_batch_size_steps_and_step_fn():
    model = OOMAbove(1000)
    calls = []

    def step_fn(m, batch):
        calls.append(len(batch[0]))
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    result = find_batch_size(model, torch.optim.SGD(model.parameters(), lr=0.1), None, data(50), start=5,
                             max_batch_size=30, steps_per_trial=3, step_fn=step_fn, device="cpu")
    assert result.batch_size == 30
    assert [t.batch_size for t in result.trials] == [5, 10, 20, 30]
    # the search warms up once (2 steps at the start size, unmeasured), then one warm-up step + 3 timed per size
    assert calls == [5] * 2 + [5] * 4 + [10] * 4 + [20] * 4 + [30] * 4
    # batches larger than the dataset wrap around it


def test_custom_collate_fn_builds_the_batches():
    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return {"x": [float(i)] * 4, "y": i % 2}

    def collate(items):
        return torch.tensor([it["x"] for it in items]), torch.tensor([it["y"] for it in items])

    model = OOMAbove(16)
    result = find_batch_size(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), Pairs(),
                             collate_fn=collate)
    assert result.batch_size == 16


def test_errors_that_are_not_oom_propagate():
    model = nn.Linear(5, 2)  # wrong input width: a bug, not an OOM
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        find_batch_size(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), data())


def test_nothing_fits_and_bad_arguments_are_clear_errors():
    model = OOMAbove(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(GradpilotError, match="even a batch of 1 does not fit"):
        find_batch_size(model, opt, nn.CrossEntropyLoss(), data())
    with pytest.raises(GradpilotError, match="dataset is empty"):
        find_batch_size(model, opt, nn.CrossEntropyLoss(), data(0))
    with pytest.raises(GradpilotError, match="max_memory"):
        find_batch_size(model, opt, nn.CrossEntropyLoss(), data(), max_memory=0)
    with pytest.raises(GradpilotError, match="steps_per_trial"):
        find_batch_size(model, opt, nn.CrossEntropyLoss(), data(), steps_per_trial=0)


class Wide(nn.Module):
    """About 1 MiB of activations per item, so memory grows with the batch on CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 8)

    def forward(self, x):
        return self.lin(x).repeat(1, 32768).mean(dim=1, keepdim=True).expand(-1, 2)


@pytest.mark.slow
def test_cpu_memory_budget_limits_the_batch():
    results = {}
    for budget_mib in (64, 512):
        model = Wide()
        results[budget_mib] = find_batch_size(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                                              data(64), max_memory=budget_mib * 2**20, max_batch_size=2048)
    small, large = results[64], results[512]
    assert small.batch_size < large.batch_size
    assert small.batch_size <= 64  # at least 1 MiB per item
    over = [t for t in small.trials if t.error and "budget" in t.error]
    assert over and all(t.peak_memory > 64 * 2**20 for t in over)
    assert all(t.peak_memory <= 64 * 2**20 for t in small.trials if t.fits)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),
        (RuntimeError("MPS backend out of memory"), True),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:83] DefaultCPUAllocator: can't allocate memory"), True),
        (RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"), True),
        (torch.cuda.OutOfMemoryError("boom"), True),
        (MemoryError(), True),
        (RuntimeError("shapes cannot be multiplied"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_is_oom(exc, expected):
    assert is_oom(exc) is expected


class Mean(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)


def test_noise_scale_on_a_problem_with_known_gradient_statistics():
    # loss = 0.5 |w - x|^2 with x ~ N(mu, diag(s^2)): per-item gradient w - x has mean G = w - mu, covariance diag(s^2)
    torch.manual_seed(0)
    dim, n = 50, 20_000
    mu, s = torch.zeros(dim), torch.full((dim,), 1.0)
    x = mu + s * torch.randn(n, dim)
    w = torch.full((dim,), 0.2)  # |G|^2 = 50 * 0.04 = 2, tr(Σ) = 50  ->  B_simple = 25
    model = Mean(w.clone())
    model.w.grad = torch.ones(dim)
    step_fn = lambda m, batch: 0.5 * (m.w - batch[0]).pow(2).sum(-1).mean()
    est = estimate_noise_scale(model, None, TensorDataset(x), small_batch=4, big_batch=256, batches=200,
                               step_fn=step_fn, seed=1, device="cpu")
    assert est.b_simple == pytest.approx(25, rel=0.2)
    assert est.trace_cov == pytest.approx(50, rel=0.2)
    assert est.grad_sq == pytest.approx(2, rel=0.2)
    assert est.recommended_batch_size == round(est.b_simple)
    assert (est.small_batch, est.big_batch, est.batches) == (4, 256, 200)
    assert torch.equal(model.w.grad, torch.ones(dim))  # gradients put back


def test_noise_scale_collate_fn_and_bad_sizes():
    torch.manual_seed(0)
    x = torch.randn(600, 3) + 1
    model = Mean(torch.zeros(3))
    items = [(row,) for row in x]

    def collate(batch):
        return [torch.stack([b[0] for b in batch])]

    est = estimate_noise_scale(model, None, items, small_batch=2, big_batch=64, batches=100, collate_fn=collate,
                               step_fn=lambda m, b: 0.5 * (m.w - b[0]).pow(2).sum(-1).mean())
    assert est.b_simple == pytest.approx(1.0, rel=0.35)  # tr(Σ)=3, |G|^2=3
    with pytest.raises(GradpilotError, match="fewer than big_batch"):
        estimate_noise_scale(model, None, items[:10], big_batch=64)
    with pytest.raises(GradpilotError, match="batches must be at least 1"):
        estimate_noise_scale(model, None, items, batches=0)


def test_the_search_never_goes_past_the_dataset_and_says_what_bounded_it():
    model = OOMAbove(10**9)  # never runs out of memory: on CPU only the cap and the budget stop the search
    result = find_batch_size(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), data(300))
    assert result.batch_size == 300 and max(t.batch_size for t in result.trials) == 300
    assert "the dataset's size, 300 items" in result.limit and "half the available memory" in result.limit
    result = find_batch_size(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), data(300),
                             max_batch_size=64, max_memory=2**40)
    assert result.batch_size == 64 and result.limit == "stopped at max_batch_size=64"
    result = find_batch_size(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), data(300),
                             start=1000, max_memory=2**40)
    assert [t.batch_size for t in result.trials] == [300]  # a start beyond the data is brought down to it


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"start": 2.5}, "start must be a positive whole number"),
    ({"max_batch_size": 0}, "max_batch_size must be a positive whole number"),
    ({"max_memory": float("nan")}, "max_memory"),
    ({"steps_per_trial": 0}, "steps_per_trial must be a positive whole number"),
])
def test_bad_search_arguments(kwargs, message):
    model = OOMAbove(8)
    with pytest.raises(GradpilotError, match=message):
        find_batch_size(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), data(), **kwargs)


def test_noise_scale_leaves_batchnorm_statistics_and_the_rng_as_they_were():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(300, 4)
    learnable = TensorDataset(x, (x[:, 0] > 0).long())
    rng = torch.random.get_rng_state()
    estimate_noise_scale(model, nn.CrossEntropyLoss(), learnable, small_batch=4, big_batch=64, batches=8)
    assert torch.equal(torch.random.get_rng_state(), rng)
    for k, v in before.items():
        assert torch.equal(v, model.state_dict()[k]), k  # running_mean, running_var, num_batches_tracked too
    assert all(p.grad is None for p in model.parameters())


def test_a_task_brings_its_model_loss_items_and_collate_fn():
    from gradpilot.examples import example_task

    task = example_task(0)
    result = find_batch_size(task, max_batch_size=64, max_memory=2**40)
    assert result.batch_size == 64
    x = torch.randn(512, 2)
    noise = estimate_noise_scale(task, dataset=TensorDataset(x, (x[:, 0] > 0).long()), big_batch=64, batches=8)
    assert noise.big_batch == 64 and noise.b_simple > 0
    with pytest.raises(GradpilotError, match="needs an optimizer and a dataset"):
        find_batch_size(task.model)
