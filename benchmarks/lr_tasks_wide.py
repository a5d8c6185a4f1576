"""More benchmark problems, added to widen the LR-suggestion corpus to eight families.

Same shape as ``lr_tasks``: each factory is ``(seed) -> gradpilot.Task`` on data made or shipped offline.
"""

from __future__ import annotations

import numpy as np
import torch
from lr_tasks import _digits, _reviews, _split, minilm_parts, neg_mse, neg_xent
from torch import nn

from gradpilot import Task
from gradpilot.examples import accuracy


# --- a residual CNN with BatchNorm under SGD + Nesterov + weight decay ------------------------------
class ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def digits_resnet_nesterov(seed: int) -> Task:
    x, y = _digits()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          ResBlock(16), ResBlock(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    train, val = _split(x, y, 500)
    return Task(model, train, nn.CrossEntropyLoss(), val, accuracy, True, "sgd",
                {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}, batch_size=32,
                name="digits-resnet-nesterov")


# --- a small vision transformer on 2x2 patches of the 8x8 digits, AdamW --------------------------
class TinyViT(nn.Module):
    def __init__(self, width: int = 32, patch: int = 2) -> None:
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(patch * patch, width)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, (8 // patch) ** 2 + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, 4, 64, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 10))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = self.patch
        patches = images.unfold(2, p, p).unfold(3, p, p).reshape(len(images), -1, p * p)
        tokens = torch.cat([self.cls.expand(len(images), -1, -1), self.embed(patches)], 1) + self.pos
        return self.head(self.encoder(tokens)[:, 0])


def digits_vit_adamw(seed: int) -> Task:
    x, y = _digits()
    torch.manual_seed(seed)
    train, val = _split(x, y, 500)
    return Task(TinyViT(), train, nn.CrossEntropyLoss(), val, accuracy, True, "adamw", {"weight_decay": 0.05},
                batch_size=32, name="digits-vit-adamw")


# --- few rows, many epochs: sklearn's diabetes (442 rows), where overfitting sets the best LR -------
def diabetes_mlp_adam(seed: int) -> Task:
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = torch.tensor((d.data - d.data.mean(0)) / d.data.std(0), dtype=torch.float32)
    y = torch.tensor((d.target - d.target.mean()) / d.target.std(), dtype=torch.float32)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(5))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1))
    train, val = _split(x[perm], y[perm], 142)
    loss = lambda out, t: nn.functional.mse_loss(out.squeeze(-1), t)  # noqa: E731
    return Task(model, train, loss, val, neg_mse, True, "adam", batch_size=32, name="diabetes-mlp-adam")


# --- a pretrained body kept frozen, a new head trained on top (all-MiniLM-L6-v2) ------------------
class FrozenMiniLMHead(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        self.head = nn.Sequential(nn.Linear(encoder.config.hidden_size, 64), nn.ReLU(), nn.Linear(64, 2))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != 0).long()
        with torch.no_grad():
            hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
            pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return self.head(pooled)


def minilm_head_adam(seed: int) -> Task:
    tok, encoder = minilm_parts(seed)  # seeded before the encoder loads, as the head's init always was
    model = FrozenMiniLMHead(encoder)
    texts, labels = _reviews(1200, seed=29)
    ids = tok(texts, padding="max_length", max_length=10, truncation=True, return_tensors="pt")["input_ids"]
    train, val = _split(ids, torch.tensor(labels), 400)
    return Task(model, train, nn.CrossEntropyLoss(), val, neg_xent, True, "adam", batch_size=32,
                name="minilm-head-adam")


# --- a GRU regressing the running mean of a noisy sequence, SGD + momentum -----------------------
class GRURegressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(1, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(seq)
        return self.head(out[:, -1])


def seqmean_gru_sgdm(seed: int) -> Task:
    gen = torch.Generator().manual_seed(31)
    seq = torch.randn(4000, 24, 1, generator=gen)
    target = (seq[:, :, 0] * torch.linspace(0.2, 1.8, 24)).mean(1) * 3
    torch.manual_seed(seed)
    train, val = _split(seq, target, 1000)
    loss = lambda out, t: nn.functional.mse_loss(out.squeeze(-1), t)  # noqa: E731
    return Task(GRURegressor(), train, loss, val, neg_mse, True, "sgd", {"momentum": 0.9}, batch_size=32,
                name="seqmean-gru-sgdm")


# --- a causal transformer language model on a Markov text, AdamW ---------------------------------
class TinyCausalLM(nn.Module):
    def __init__(self, vocab: int, width: int = 48, length: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, 4, 96, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        h = self.encoder(self.embed(tokens) + self.pos[:n], mask=self.mask[:n, :n], is_causal=True)
        return self.head(h).transpose(1, 2)


def markov_text(vocab: int, n: int, seed: int, concentration: float) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    trans = rng.dirichlet(np.full(vocab, concentration), size=(vocab, vocab))  # second order
    text = [0, 1]
    for _ in range(n):
        text.append(int(rng.choice(vocab, p=trans[text[-2], text[-1]])))
    return torch.tensor(text)


def markov_transformer_adamw(seed: int) -> Task:
    seq = markov_text(16, 30_000, seed=41, concentration=0.2).unfold(0, 33, 32)
    torch.manual_seed(seed)
    train, val = _split(seq[:, :-1], seq[:, 1:], 150)
    return Task(TinyCausalLM(16), train, nn.CrossEntropyLoss(), val, neg_xent, True, "adamw",
                {"weight_decay": 0.01}, batch_size=32, name="markov-transformer-adamw")


# --- AdamW with a high weight decay on an MLP ------------------------------------------------------
def digits_mlp_adamw_wd(seed: int) -> Task:
    x, y = _digits()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(),
                          nn.Linear(256, 10))
    train, val = _split(x, y, 500)
    return Task(model, train, nn.CrossEntropyLoss(), val, accuracy, True, "adamw", {"weight_decay": 0.3},
                batch_size=32, name="digits-mlp-adamw-wd")


# --- a convex problem under Adam: multinomial logistic regression on many noisy features ----------
def classes_logreg_adam(seed: int) -> Task:
    from sklearn.datasets import make_classification

    x, y = make_classification(4000, n_features=50, n_informative=12, n_classes=4, flip_y=0.05, random_state=6)
    torch.manual_seed(seed)
    train, val = _split(torch.tensor(x, dtype=torch.float32), torch.tensor(y), 1000)
    return Task(nn.Linear(50, 4), train, nn.CrossEntropyLoss(), val, accuracy, True, "adam", batch_size=32,
                name="classes-logreg-adam")
