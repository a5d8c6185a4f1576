"""The diagnosis corpus: real runs written by the real libraries, labelled from facts the training loop saw.

26 tasks in 14 families (the LR benchmark's tasks, plus two with noisy labels). Each task trains at multiples of
its grid-best LR (benchmarks/lr_suggestion.py: constant LR, the same steps) from ×1/100 to ×100: constant,
cosine, linear decay and warmup, on full data and — many epochs — on a tenth of it. Each run is written by
one of Hugging Face's Trainer, Lightning, Keras 3 (torch backend) and gradpilot's plain CSV, in turn.

    python benchmarks/diagnose_corpus.py      # generates what is missing (about half an hour), then counts

Runs are kept under benchmarks/results/diagnose_corpus/ (outside git): each in its own folder, as the library
wrote it, with the facts in facts.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diagnose_writers import WRITERS
from lr_corpus import TASKS
from lr_scoring import Cache, Scorer
from lr_tasks import BenchTask

import gradpilot

ROOT = Path(__file__).parent / "results" / "diagnose_corpus"
LR_CACHE = Path(__file__).parent / "results" / "lr_suggestion.json"
GRID_CACHE = Path(__file__).parent / "results" / "diagnose_grid.json"  # its own file: the LR benchmark may run too
FAMILIES = {
    "spirals-mlp-adamw": "mlp-adaptive", "digits-bnmlp-adam": "mlp-adaptive", "digits-mlp-adamw-wd": "mlp-adaptive",
    "moons-mlp-nesterov": "mlp-sgd", "classes-mlp-sgd-wd": "mlp-sgd",
    "digits-cnn-sgdm": "cnn-sgd", "digits-resnet-nesterov": "cnn-sgd",
    "digits-bncnn-adamw": "cnn-adaptive", "waves-conv1d-adam": "cnn-adaptive",
    "friedman-mlp-sgd": "regression", "wave-deepmlp-adam": "regression", "regression-mlp-nadam": "regression",
    "diabetes-mlp-adam": "small-tabular",
    "count-gru-rmsprop": "recurrent", "digits-rowlstm-adamw": "recurrent", "seqmean-gru-sgdm": "recurrent",
    "charlm-lstm-adam": "language-model", "markov-transformer-adamw": "language-model",
    "max-transformer-adamw": "transformer", "digits-vit-adamw": "transformer",
    "minilm-finetune-adamw": "fine-tuning", "minilm-head-adam": "fine-tuning",
    "digits-logreg-sgd": "linear", "classes-logreg-adam": "linear",
    "spirals-labelnoise-adamw": "label-noise", "digits-labelnoise-sgdm": "label-noise",
}
TOKENS = {"count-gru-rmsprop", "charlm-lstm-adam", "markov-transformer-adamw", "max-transformer-adamw",
          "minilm-finetune-adamw", "minilm-head-adam"}  # integer inputs: not through Keras's float Input
BATCHNORM = {"digits-bnmlp-adam", "digits-bncnn-adamw", "digits-resnet-nesterov"}  # Keras's wrapper keeps train mode
# (multiplier of the grid-best LR, schedule, seed, small data)
DESIGN: tuple[tuple[float, str, int, bool], ...] = (
    *((m, "constant", 0, False) for m in (0.01, 0.1, 1 / 3, 1.0, 3.0, 10.0, 30.0, 100.0)),
    *((m, "constant", 1, False) for m in (0.1, 10.0)),
    *((m, "cosine", 0, False) for m in (0.1, 1.0, 10.0)),
    *((m, "warmup", 0, False) for m in (1 / 3, 3.0)),
    (1.0, "linear", 0, False),
    (1.0, "constant", 0, True),
)


def _noisy_labels(make: Any, share: float) -> Any:
    def task(seed: int) -> gradpilot.Task:
        t = make(seed)
        x, y = t.train_data.tensors
        gen = torch.Generator().manual_seed(77)
        flip = torch.rand(len(y), generator=gen) < share
        classes = int(y.max()) + 1
        noisy = torch.where(flip, torch.randint(0, classes, y.shape, generator=gen), y)
        return dataclasses.replace(t, train_data=torch.utils.data.TensorDataset(x, noisy), name=t.name + "-noisy")
    return task


def bench_tasks() -> list[BenchTask]:
    by = {bt.name: bt for bt in TASKS}
    extra = [
        BenchTask("spirals-labelnoise-adamw", _noisy_labels(by["spirals-mlp-adamw"].make, 0.3), 200,
                  by["spirals-mlp-adamw"].grid, "label-noise"),
        BenchTask("digits-labelnoise-sgdm", _noisy_labels(by["digits-cnn-sgdm"].make, 0.3), 100,
                  by["digits-cnn-sgdm"].grid, "label-noise"),
    ]
    return [bt for bt in (*TASKS, *extra) if bt.name in FAMILIES]


def writers_for(name: str) -> list[str]:
    keras_ok = name not in TOKENS and name not in BATCHNORM
    return ["hf", "lightning", "csv", *(["keras"] if keras_ok else [])]


def run_id(bt: BenchTask, m: float, schedule: str, seed: int, small: bool) -> str:
    return f"{bt.name}__x{m:.4g}__{schedule}__s{seed}{'__small' if small else ''}"


def _small(task: gradpilot.Task) -> gradpilot.Task:
    n = len(task.train_data)  # type: ignore[arg-type]
    keep = max(2 * task.batch_size, n // 10 // task.batch_size * task.batch_size)
    return dataclasses.replace(task, train_data=Subset(task.train_data, range(keep)))


def generate(bt: BenchTask, scorer: Scorer | None) -> list[dict[str, Any]]:
    """The task's runs, trained and written where missing (``scorer`` None: only those already there)."""
    out = []
    writers = writers_for(bt.name)
    for i, (m, schedule, seed, small) in enumerate(DESIGN):
        folder = ROOT / run_id(bt, m, schedule, seed, small)
        kind = writers[i % len(writers)]
        facts_path = folder / "facts.json"
        if not facts_path.exists():
            if scorer is None:
                continue
            task = bt.make(seed)
            task = _small(task) if small else task
            torch.manual_seed(seed)
            steps = bt.steps * (3 if small else 1)
            with _quiet():
                facts = WRITERS[kind](task, scorer.best_lr * m, schedule, steps, seed, folder / "log")
            facts |= {"task": bt.name, "family": FAMILIES[bt.name], "writer": kind, "multiplier": m, "lr":
                      scorer.best_lr * m, "schedule": schedule, "seed": seed, "small": small, "steps": steps,
                      "best_lr": scorer.best_lr, "best": scorer.best, "untrained": scorer.untrained}
            facts_path.write_text(json.dumps(facts))
        out.append(json.loads(facts_path.read_text()) | {"folder": str(folder / "log")})
    return out


@contextlib.contextmanager
def _quiet() -> Any:
    logging.disable(logging.WARNING)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def load_corpus(progress: bool = True, train: bool = True) -> list[dict[str, Any]]:
    torch.set_num_threads(1)  # tiny models: a second thread buys nothing
    cache = Cache(GRID_CACHE, False)
    if LR_CACHE.exists():
        cache.data = json.loads(LR_CACHE.read_text()) | cache.data
    runs = []
    for bt in bench_tasks():
        t0 = time.time()
        runs += generate(bt, Scorer(bt, cache) if train else None)
        if progress:
            print(f"{bt.name}: {time.time() - t0:.0f}s", flush=True)
    return runs


if __name__ == "__main__":
    corpus = load_corpus()
    families = {r["family"] for r in corpus}
    writers = {w: sum(r["writer"] == w for r in corpus) for w in WRITERS}
    print(f"{len(corpus)} runs, {len(families)} families, by writer {writers}")
    print(f"NaN {sum(r['nan'] for r in corpus)}, no metric {sum(r['final_metric'] is None for r in corpus)}",
          math.nan)
