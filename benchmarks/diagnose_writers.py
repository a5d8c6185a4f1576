"""Train one benchmark task with a real library and let that library write its own log.

Each writer trains ``task`` for ``steps`` optimizer steps at peak LR ``lr`` under ``schedule`` ("constant",
"cosine", "linear" or "warmup" = linear decay after 10% warmup), writes the library's log into ``folder`` and
returns the facts the training loop saw, from which the run is labelled (never from the log itself):
``losses`` (every training loss), ``val_losses`` (at each evaluation), ``final_metric`` (the task's metric on
its validation set after training, NaN if the model broke) and ``nan`` (a non-finite loss or weight at the end).

- ``hf``: the Hugging Face ``Trainer`` with its defaults for logging (``logging_nan_inf_filter=True``),
  ``trainer_state.json`` saved by ``Trainer.save_state``.
- ``lightning``: a ``LightningModule`` under ``lightning.Trainer`` with ``CSVLogger`` and a
  ``LearningRateMonitor``.
- ``keras``: Keras 3 on the torch backend (the task's module wrapped in ``TorchModuleWrapper``, Keras's own
  optimizer), ``CSVLogger('training.log')`` — one row per epoch.
- ``csv``: gradpilot's ``fit``, written as a plain CSV.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lr_scoring import evaluate
from torch import nn
from torch.utils.data import DataLoader, Dataset

import gradpilot
from gradpilot.examples import accuracy

EVALS = 8  # evaluations per run
LOG_POINTS = 40  # training-loss log lines per run


def lr_lambda(schedule: str, steps: int):  # type: ignore[no-untyped-def]
    warm = max(1, steps // 10) if schedule == "warmup" else 0

    def factor(i: int) -> float:
        if i < warm:
            return (i + 1) / warm
        t = (i - warm) / max(1, steps - warm)
        if schedule == "cosine":
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if schedule in ("linear", "warmup"):
            return max(0.0, 1 - t)
        return 1.0
    return factor


def facts(task: gradpilot.Task, losses: list[float], val_losses: list[float]) -> dict[str, Any]:
    broken = any(not torch.isfinite(p).all() for p in task.model.parameters())
    final = float("nan") if broken else evaluate(task)
    clean = lambda xs: [float(x) if math.isfinite(x) else None for x in xs]  # noqa: E731 - JSON has no NaN
    nan = broken or (bool(losses) and not math.isfinite(losses[-1]))
    return {"losses": clean(losses), "val_losses": clean(val_losses),
            "final_metric": final if math.isfinite(final) else None, "nan": nan}


def _val_loss(task: gradpilot.Task) -> float:
    model = task.model
    was = model.training
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in task.val_loader():
            total += float(task.loss_fn(model(x), y)) * len(y)
            n += len(y)
    model.train(was)
    return total / n


# --- plain CSV from gradpilot.fit ---------------------------------------------------------------------------
def write_csv(task: gradpilot.Task, lr: float, schedule: str, steps: int, seed: int, folder: Path) -> dict[str, Any]:
    losses: list[float] = []
    loader = task.train_loader(seed)
    opt = task.make_optimizer(lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(schedule, steps))
    batches = gradpilot.train.batches.cycle(loader)
    rows, val_losses = [], []
    every, log_every = max(1, steps // EVALS), max(1, steps // LOG_POINTS)
    task.model.train()
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = gradpilot.train.batches.compute_loss(task.model, next(batches), task.loss_fn, None)
        losses.append(float(loss))
        if torch.isfinite(loss):
            loss.backward()
            opt.step()
        row: dict[str, Any] = {"step": step, "epoch": round(step / len(loader), 3), "lr": sched.get_last_lr()[0]}
        sched.step()
        if step % log_every == 0:
            row["train_loss"] = float(np.mean(losses[-log_every:]))
        if step % every == 0:
            val_losses.append(_val_loss(task))
            row["val_loss"] = val_losses[-1]
            if task.metric is accuracy:
                row["val_accuracy"] = evaluate(task)
        if len(row) > 3:
            rows.append(row)
    fields = ["step", "epoch", "lr", "train_loss", "val_loss", "val_accuracy"]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)
    return facts(task, losses, val_losses)


# --- Hugging Face Trainer -----------------------------------------------------------------------------------
class _Items(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, data: Dataset[Any]) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.data[i]
        return {"x": x, "labels": y}


class _HFModel(nn.Module):
    def __init__(self, task: gradpilot.Task, losses: list[float]) -> None:
        super().__init__()
        self.inner, self.loss_fn, self.losses = task.model, task.loss_fn, losses

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.inner(x)
        loss = self.loss_fn(out, labels)
        if self.training:
            self.losses.append(float(loss))
        return {"loss": loss, "logits": out}


def write_hf(task: gradpilot.Task, lr: float, schedule: str, steps: int, seed: int, folder: Path) -> dict[str, Any]:
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    losses: list[float] = []
    val_losses: list[float] = []

    class Evals(TrainerCallback):  # type: ignore[misc]
        def on_evaluate(self, _args: Any, _state: Any, _control: Any, metrics: dict[str, float], **_kw: Any) -> None:
            val_losses.append(float(metrics["eval_loss"]))

    model = _HFModel(task, losses)
    opt = task.make_optimizer(lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(schedule, steps))
    args = TrainingArguments(output_dir=str(folder), max_steps=steps, per_device_train_batch_size=task.batch_size,
                             per_device_eval_batch_size=256, logging_steps=max(1, steps // LOG_POINTS),
                             eval_strategy="steps", eval_steps=max(1, steps // EVALS), save_strategy="no",
                             report_to="none", use_cpu=True, disable_tqdm=True, seed=seed, learning_rate=lr,
                             dataloader_num_workers=0)
    compute = _hf_accuracy if task.metric is accuracy else None
    trainer = Trainer(model=model, args=args, train_dataset=_Items(task.train_data),
                      eval_dataset=_Items(task.val_data), optimizers=(opt, sched), compute_metrics=compute,
                      callbacks=[Evals()])
    trainer.train()
    trainer.save_state()
    return facts(task, losses, val_losses)


def _hf_accuracy(pred: Any) -> dict[str, float]:
    logits, labels = pred.predictions, pred.label_ids
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


# --- Lightning ------------------------------------------------------------------------------------------------
def write_lightning(task: gradpilot.Task, lr: float, schedule: str, steps: int, seed: int,
                    folder: Path) -> dict[str, Any]:
    import lightning.pytorch as pl

    losses: list[float] = []
    val_losses: list[float] = []

    class Module(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.inner = task.model
            self.batch_losses: list[torch.Tensor] = []

        def training_step(self, batch: Any, _i: int) -> torch.Tensor:
            x, y = batch
            loss = task.loss_fn(self.inner(x), y)
            losses.append(float(loss))
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, _i: int) -> None:
            x, y = batch
            out = self.inner(x)
            self.batch_losses.append(task.loss_fn(out, y) * len(y))
            self.log("val_loss", task.loss_fn(out, y), on_epoch=True)
            if task.metric is accuracy:
                self.log("val_acc", accuracy(out, y), on_epoch=True)

        def on_validation_epoch_end(self) -> None:
            n = len(task.val_data)  # type: ignore[arg-type]
            if not self.trainer.sanity_checking:
                val_losses.append(float(sum(self.batch_losses)) / n)
            self.batch_losses.clear()

        def configure_optimizers(self) -> Any:
            opt = task.make_optimizer(lr)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(schedule, steps))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    loader = DataLoader(task.train_data, batch_size=task.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    every = max(1, steps // EVALS)
    trainer = pl.Trainer(max_steps=steps, val_check_interval=min(every, len(loader)), check_val_every_n_epoch=None,
                         log_every_n_steps=max(1, steps // LOG_POINTS), accelerator="cpu", num_sanity_val_steps=0,
                         logger=pl.loggers.CSVLogger(str(folder)), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[pl.callbacks.LearningRateMonitor("step")])
    trainer.fit(Module(), loader, DataLoader(task.val_data, batch_size=256))
    return facts(task, losses, val_losses)


# --- Keras 3 on the torch backend -------------------------------------------------------------------------
KERAS_OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop", "nadam": "Nadam"}


def write_keras(task: gradpilot.Task, lr: float, schedule: str, steps: int, seed: int,
                folder: Path) -> dict[str, Any]:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    keras.utils.set_random_seed(seed)
    x, y = (torch.stack(t) for t in zip(*[task.train_data[i] for i in range(len(task.train_data))], strict=True))
    xv, yv = (torch.stack(t) for t in zip(*[task.val_data[i] for i in range(len(task.val_data))], strict=True))
    epochs = 10
    per_epoch = max(1, steps // epochs)
    classify = task.metric is accuracy
    factor = lr_lambda(schedule, epochs)  # Keras's documented way: LearningRateScheduler, once per epoch
    kwargs = {k: v for k, v in task.optimizer_kwargs.items() if k in ("momentum", "nesterov", "weight_decay")}
    if task.optimizer_name in ("adam", "nadam", "rmsprop"):
        kwargs.pop("weight_decay", None)
    optimizer = getattr(keras.optimizers, KERAS_OPTIMIZERS[task.optimizer_name])(learning_rate=lr, **kwargs)
    with torch.no_grad():
        shape = (None, *task.model(x[:2]).shape[1:])
    inputs = keras.Input(shape=tuple(x.shape[1:]))
    model = keras.Model(inputs, keras.layers.TorchModuleWrapper(task.model, output_shape=shape)(inputs))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True) if classify else "mean_squared_error"
    if not classify:
        y, yv = y.reshape(-1, 1), yv.reshape(-1, 1)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"] if classify else None)
    losses: list[float] = []
    val_losses: list[float] = []

    class Record(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, _epoch: int, logs: dict[str, float] | None = None) -> None:
            val_losses.append(float((logs or {}).get("val_loss", float("nan"))))

        def on_train_batch_end(self, _batch: int, logs: dict[str, float] | None = None) -> None:
            losses.append(float((logs or {}).get("loss", float("nan"))))

    folder.mkdir(parents=True, exist_ok=True)
    data = _Repeat(x.numpy(), y.numpy(), task.batch_size, seed)
    model.fit(iter(data), epochs=epochs, steps_per_epoch=per_epoch, validation_data=(xv.numpy(), yv.numpy()),
              callbacks=[keras.callbacks.LearningRateScheduler(lambda epoch: lr * factor(epoch)),
                         keras.callbacks.CSVLogger(str(folder / "training.log")), Record()], verbose=0)
    return facts(task, losses, val_losses)


class _Repeat:
    """Shuffled batches forever, as a Python generator Keras can draw steps_per_epoch from."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch: int, seed: int) -> None:
        self.x, self.y, self.batch, self.rng = x, y, batch, np.random.default_rng(seed)

    def __iter__(self):  # type: ignore[no-untyped-def]
        while True:
            order = self.rng.permutation(len(self.x))
            for i in range(0, len(order) - self.batch + 1, self.batch):
                idx = order[i: i + self.batch]
                yield self.x[idx], self.y[idx]


WRITERS = {"csv": write_csv, "hf": write_hf, "lightning": write_lightning, "keras": write_keras}
