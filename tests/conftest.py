"""What the tests share: tiny real tasks (a few hundred items, models of a few hundred parameters), task files,
and the hook that kills a tune at a known point."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from gradpilot.diagnosis.history import History, Series
from gradpilot.examples import accuracy, spirals
from gradpilot.train.task import Task

# The environment variable that makes a tune process SIGKILL itself after N short runs of its LR search
# (gradpilot._search.KILL_AFTER_RUNS): a kill test that needs no sleeping loss and no polling deadline.
KILL_AFTER_RUNS = "GRADPILOT_TEST_KILL_AFTER_RUNS"


# --- datasets and models: 10 features, for diagnosis and the monitor ---

def regression(n, seed=0, noise=0.1):
    """Inputs drawn by ``seed``; the same linear target for every seed, so validation data matches training."""
    w = torch.randn(10, 1, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    return TensorDataset(x, x @ w + noise * torch.randn(n, 1, generator=g))


def classification(n, seed=0, flip=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    flipped = torch.rand(n, generator=g) < flip
    y[flipped] = 1 - y[flipped]
    return TensorDataset(x, y)


def mlp(out=1, width=32, depth=1):
    torch.manual_seed(0)
    layers = [nn.Linear(10, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, out))



def synthetic(values, lr=1e-3, val=None):
    steps = np.arange(1, len(values) + 1, dtype=float)
    return History(Series(steps, np.asarray(values, float)), val_loss=val,
                   lr=None if lr is None else Series(steps, np.full(len(values), lr)))


# --- float64 models and data, for exact accumulation and DDP comparisons ---

def double_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def double_classification(n):
    gen = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen))


class Tagger(nn.Module):
    """Per-token classification; outputs (batch, classes, time) for CrossEntropyLoss."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 8).double()
        self.head = nn.Linear(8, 4).double()

    def forward(self, tokens):
        return self.head(self.embed(tokens)).transpose(1, 2)


def padded_sequences(n=32, length=12):
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 10, (n, length), generator=gen)
    labels = torch.randint(0, 4, (n, length), generator=gen)
    lengths = torch.randint(1, length + 1, (n,), generator=gen)
    labels[torch.arange(length)[None, :] >= lengths[:, None]] = -100  # padding, very uneven per sequence
    return TensorDataset(tokens, labels)



# --- tasks ---

def small_task(seed: int = 0, *, n: int = 512, epochs: int = 4, optimizer: str = "adamw", batch_size: int = 32,
               train=None, val=True) -> Task:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 3))
    return Task(model=model, train_data=train if train is not None else spirals(n, seed=seed),
                val_data=spirals(256, seed=seed + 1) if val else None, loss_fn=nn.CrossEntropyLoss(),
                metric=accuracy, higher_is_better=True, optimizer=optimizer, lr=1e-3, batch_size=batch_size,
                epochs=epochs, name="small")



TASK_FILE = """
import torch
from torch import nn
from torch.utils.data import TensorDataset
import gradpilot

def task(seed: int = 0) -> gradpilot.Task:
    torch.manual_seed(seed)
    x = torch.randn(64, 4)
    return gradpilot.Task(model=nn.Linear(4, 2), train_data=TensorDataset(x, (x[:, 0] > 0).long()),
                          loss_fn=nn.CrossEntropyLoss(), optimizer="sgd", optimizer_kwargs={"momentum": 0.9},
                          lr=0.05, batch_size=8, name=f"file-task-{seed}")
"""


def write(tmp_path, text, name="task.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path



def tune_task_file(*, items: int = 2048, epochs: int = 2, sleep: float = 0.0) -> str:
    """A task file for tune run as a command: the spirals MLP, ``sleep`` seconds in every loss call (so that
    two processes sharing a study both get work)."""
    return textwrap.dedent(f"""
        import time, torch
        from torch import nn
        from gradpilot import Task
        from gradpilot.examples import spirals, accuracy

        class Slow(nn.CrossEntropyLoss):
            def forward(self, a, b):
                time.sleep({sleep})
                return super().forward(a, b)

        def task(seed=0):
            torch.manual_seed(seed)
            model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 3))
            return Task(model=model, train_data=spirals({items}, seed=seed), val_data=spirals(256, seed=seed + 1),
                        loss_fn=Slow(), metric=accuracy, higher_is_better=True, lr=1e-3, batch_size=32,
                        epochs={epochs})
        """)


def one_line_error(result, code=2):
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture(autouse=True, scope="session")
def fixed_clock():
    """Every tune in the tests (module-wide fixtures and subprocesses too) records this clock — 0.1 ms an item
    trained, 5 ms a validation — in place of its measurement and is charged by it, so two tunes of one task plan
    alike; a test of the clock itself takes it off (``monkeypatch.delenv``)."""
    import os

    from gradpilot.tuning.budget import FIXED_CLOCK

    os.environ[FIXED_CLOCK] = "1e-4,5e-3"
    yield
    os.environ.pop(FIXED_CLOCK, None)
