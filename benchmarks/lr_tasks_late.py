"""Benchmark problems written after the default LR rule (gradpilot.lr.suggest.read, its margins included) was fixed.

They were never used to choose anything: the benchmark reports them apart, as tasks the rule has not seen.
"""

from __future__ import annotations

import torch
from lr_tasks import _split, neg_mse, neg_xent
from lr_tasks_wide import TinyCausalLM, markov_text
from torch import nn

from gradpilot import Task
from gradpilot.examples import accuracy


def blobs_mlp_adagrad(seed: int) -> Task:
    from sklearn.datasets import make_blobs

    x, y = make_blobs(3000, n_features=8, centers=6, cluster_std=3.0, random_state=12)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 6))
    train, val = _split(torch.tensor(x, dtype=torch.float32), torch.tensor(y), 1000)
    return Task(model, train, nn.CrossEntropyLoss(), val, accuracy, True, "adagrad", batch_size=32,
                name="blobs-mlp-adagrad")


def circles_mlp_sgdm_wd(seed: int) -> Task:
    from sklearn.datasets import make_circles

    x, y = make_circles(3000, noise=0.15, factor=0.5, random_state=13)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    train, val = _split(torch.tensor(x, dtype=torch.float32), torch.tensor(y), 1000)
    return Task(model, train, nn.CrossEntropyLoss(), val, accuracy, True, "sgd",
                {"momentum": 0.9, "weight_decay": 1e-3}, batch_size=32, name="circles-mlp-sgdm-wd")


class NextValueLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(1, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(seq)
        return self.head(out[:, -1])


def sine_lstm_adam(seed: int) -> Task:
    gen = torch.Generator().manual_seed(14)
    t = torch.rand(3000, 1, generator=gen) * 50 + torch.arange(21).float() * 0.3
    freq = 0.5 + torch.rand(3000, 1, generator=gen)
    wave = torch.sin(freq * t) + 0.1 * torch.randn(3000, 21, generator=gen)
    torch.manual_seed(seed)
    train, val = _split(wave[:, :20].unsqueeze(-1), wave[:, 20], 1000)
    loss = lambda out, target: nn.functional.mse_loss(out.squeeze(-1), target)  # noqa: E731
    return Task(NextValueLSTM(), train, loss, val, neg_mse, True, "adam", batch_size=32, name="sine-lstm-adam")


def friedman2_mlp_adamw_wd(seed: int) -> Task:
    from sklearn.datasets import make_friedman2

    x, y = make_friedman2(3000, noise=30.0, random_state=15)
    x = (x - x.mean(0)) / x.std(0)
    x_t = torch.tensor(x, dtype=torch.float32)
    y_t = torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 1))
    train, val = _split(x_t, y_t, 1000)
    loss = lambda out, target: nn.functional.mse_loss(out.squeeze(-1), target)  # noqa: E731
    return Task(model, train, loss, val, neg_mse, True, "adamw", {"weight_decay": 0.1}, batch_size=32,
                name="friedman2-mlp-adamw-wd")


def markov_transformer_sgdm(seed: int) -> Task:
    seq = markov_text(12, 25_000, seed=43, concentration=0.3).unfold(0, 33, 32)
    torch.manual_seed(seed)
    train, val = _split(seq[:, :-1], seq[:, 1:], 150)
    return Task(TinyCausalLM(12), train, nn.CrossEntropyLoss(), val, neg_xent, True, "sgd", {"momentum": 0.9},
                batch_size=32, name="markov-transformer-sgdm")
