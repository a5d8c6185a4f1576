"""gradpilot on a Hugging Face ``Trainer``: the range test on the trainer's own pieces, and a callback that
watches the run (and, with ``autopilot=True``, steers it through the trainer's own means).

    from gradpilot.integrations.transformers import GradpilotCallback, find_lr
    result = find_lr(trainer)                                   # model, optimizer, data, loss: the trainer's
    trainer.add_callback(GradpilotCallback(autopilot=True))     # gradpilot-diagnosis.json in output_dir

Needs the ``transformers`` extra: ``pip install 'gradpilot[transformers]'``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from gradpilot.diagnosis.logs import hidden_nan
from gradpilot.errors import GradpilotError
from gradpilot.lr import range_test as lr_finder
from gradpilot.probing.measure import live_task
from gradpilot.train.monitor import Monitor, log_finding, steer
from gradpilot.train.state import Snapshot
from gradpilot.train.task import Cadence, Task

log = logging.getLogger(__name__)
DIAGNOSIS_FILE = "gradpilot-diagnosis.json"


def find_lr(trainer: Trainer, **kwargs: Any) -> lr_finder.LRFinderResult:
    """The LR range test on ``trainer``'s model, with the optimizer its arguments make (type, betas, weight
    decay, parameter groups), its train dataloader (collator, batch size), its gradient accumulation and its
    ``compute_loss``. The model, the trainer's optimizer and its state are left as they were. ``kwargs`` go
    to ``gradpilot.find_lr`` (``num_steps``, ``start_lr``, ``end_lr``, ``rule``, ...)."""
    if not isinstance(trainer, Trainer):
        raise GradpilotError(f"find_lr needs a transformers.Trainer, got {type(trainer).__name__}")
    loader = trainer.get_train_dataloader()
    kept = trainer.optimizer
    trainer.optimizer = None
    try:
        optimizer = trainer.create_optimizer()
    finally:
        trainer.optimizer = kept

    def step(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        loss = trainer.compute_loss(model, batch)
        return loss[0] if isinstance(loss, tuple) else loss

    kwargs.setdefault("accumulation_steps", trainer.args.gradient_accumulation_steps)
    kwargs.setdefault("device", trainer.args.device)
    if trainer.model is None:
        raise GradpilotError("the trainer has no model: give Trainer(model=...) or model_init")
    return lr_finder.find_lr(trainer.model, optimizer, train_loader=loader, step_fn=step, **kwargs)


def task_from_trainer(trainer: Trainer, name: str = "trainer",
                      make_trainer: Callable[[dict[str, Any]], Any] | None = None) -> Task:
    """The ``Task`` ``gradpilot tune`` works on for a ``make_trainer(plan)`` file: the trainer's model, train
    and eval datasets, data collator, ``compute_loss`` (the loss the range test and the batch trials train on),
    the optimizer its arguments make (with its weight-decay groups), its LR, batch size, epochs, clipping and
    mixed precision. With ``make_trainer``, every run tune makes trains through ``Trainer.train()`` of the
    trainers it builds (``hf_runner.TrainerRunner``), scored by the trainer's ``evaluate()``: its
    ``metric_for_best_model`` (in the direction ``greater_is_better`` says) where it names one, else the loss."""
    model, train, evaluation = _pieces(trainer)
    args = trainer.args

    def step(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        loss = trainer.compute_loss(model, batch)
        return loss[0] if isinstance(loss, tuple) else loss

    metric = args.metric_for_best_model if args.metric_for_best_model not in (None, "loss", "eval_loss") else None
    return Task(model=model, train_data=train, loss_fn=None, val_data=evaluation,
                higher_is_better=bool(args.greater_is_better) if metric else False,
                optimizer=_optimizer_factory(trainer), lr=args.learning_rate,
                batch_size=args.per_device_train_batch_size, accumulation=args.gradient_accumulation_steps,
                epochs=max(1, math.ceil(args.num_train_epochs)), name=name, step_fn=step,
                collate_fn=trainer.data_collator,
                max_grad_norm=args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else None,
                precision="bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
                runner=_runner(make_trainer, metric), metric_name=_eval_name(metric),
                cadence=cadence(args, len(train)))


def _eval_name(metric: str | None) -> str | None:
    """The name the trainer's evaluate() reports the metric under (``eval_accuracy``)."""
    if metric is None:
        return None
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def cadence(args: TrainingArguments, items: int) -> Cadence:
    """How one run of the trainer as set up validates and saves: evaluations and saves in a run (by its
    strategies, ``eval_steps`` / ``save_steps`` over the run's optimizer steps), and its settings counted in
    steps, which a plan at another batch rescales."""
    per_epoch = math.ceil(math.ceil(items / args.per_device_train_batch_size) / args.gradient_accumulation_steps)
    steps = max(1, math.ceil(args.num_train_epochs * per_epoch)) if args.max_steps <= 0 else args.max_steps
    epochs = math.ceil(steps / per_epoch)

    def count(strategy: Any, every: float | None) -> int:
        name = str(getattr(strategy, "value", strategy))
        if name == "steps":
            interval = int(every) if every and every >= 1 else max(1, math.ceil(steps * (every or 1)))
            return steps // interval
        return epochs if name == "epoch" else 0

    counted = {name: int(value) for name in ("eval_steps", "save_steps", "logging_steps")
               if (value := getattr(args, name, None)) and value >= 1}
    eval_every = args.eval_steps or args.logging_steps  # transformers evaluates every logging_steps by default
    return Cadence(count(args.eval_strategy, eval_every), count(args.save_strategy, args.save_steps), counted)


def _pieces(trainer: Any) -> tuple[torch.nn.Module, Any, Any]:
    """The trainer's model, training set and evaluation set, which tune needs (one evaluation set)."""
    if not isinstance(trainer, Trainer):
        raise GradpilotError(f"make_trainer() returned {type(trainer).__name__}, not a transformers.Trainer")
    if trainer.model is None or trainer.train_dataset is None or trainer.eval_dataset is None:
        raise GradpilotError("tune needs the trainer's model, train_dataset and eval_dataset: give all three")
    if isinstance(trainer.eval_dataset, dict):
        raise GradpilotError("tune validates on one eval_dataset: give one, not a dict of them")
    return trainer.model, trainer.train_dataset, trainer.eval_dataset


def _runner(make_trainer: Callable[[dict[str, Any]], Any] | None, metric: str | None) -> Any:
    """Runs through the trainers ``make_trainer`` builds, where there is one."""
    if make_trainer is None:
        return None
    from gradpilot.integrations.hf_runner import TrainerRunner

    return TrainerRunner(make_trainer, metric)


def _optimizer_factory(trainer: Trainer) -> Callable[[Iterable[torch.nn.Parameter], float], torch.optim.Optimizer]:
    """Optimizers as the trainer makes them: its class and settings, weight decay on its decay parameters only."""
    assert trainer.model is not None
    cls, settings = Trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)  # type: ignore[arg-type]
    decay = set(trainer.get_decay_parameter_names(trainer.model))
    names = {id(p): n for n, p in trainer.model.named_parameters()}

    def make(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
        params = list(params)
        decayed = [p for p in params if names.get(id(p)) in decay]
        groups = [{"params": decayed, "weight_decay": trainer.args.weight_decay},
                  {"params": [p for p in params if names.get(id(p)) not in decay], "weight_decay": 0.0}]
        made: torch.optim.Optimizer = cls([g for g in groups if g["params"]], **{**settings, "lr": lr})
        return made

    return make


class GradpilotCallback(TrainerCallback):
    """Feeds gradpilot's monitor from the trainer's own logs (``loss``, ``learning_rate``, ``grad_norm``,
    ``eval_loss``: values the trainer already brought to the host, so no sync is added), logs each finding
    as it appears and writes ``gradpilot-diagnosis.json`` (the ``gradpilot diagnose --json`` shape, with
    what the autopilot did) into ``output_dir`` when training ends.

    With ``autopilot=True`` it acts as ``gradpilot.fit``'s autopilot does: on oscillation it lowers the LR
    (the optimizer's param groups and the scheduler's base LRs); on NaN or divergence it puts back the last
    state that checked clean and lowers the LR more; on overfitting it stops training
    (``control.should_training_stop``; the best checkpoint comes back with ``load_best_model_at_end=True``).
    The trainer's loss of 0.0 where its ``logging_nan_inf_filter`` hid a NaN is read as the NaN it was.

    With ``stop_file=PATH``, training stops at the first step after that file appears: what
    ``gradpilot watch --stop-file PATH`` creates at the first failing finding it reads in the run's log.

    With ``probe=True``, a finding that only hints at the LR (``Finding.sure`` False) is measured instead of
    guessed: ``gradpilot.probing.measure.probe_live`` trains short branches from the run as it stands (``probe_share``
    of the run, everything put back after) and logs the verdict in ``probes``; with ``autopilot=True`` as well,
    the LR is moved to the one the probe named.
    """

    def __init__(self, autopilot: bool = False, *, check_every: int = 5, probe: bool = False,
                 probe_share: float = 0.05, stop_file: str | Path | None = None) -> None:
        self.monitor = Monitor(check_every=check_every, autopilot=autopilot, on_finding=log_finding)
        self.good = Snapshot()
        self.output: Path | None = None
        self.probe, self.probe_share = probe, probe_share
        self.probes: list[Any] = []  # (step, ProbeResult) of every probe taken
        self._pending = False  # a hint came before the trainer had validated: probe at the next log
        self.stop_file = None if stop_file is None else Path(stop_file)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        """Stop training when the stop file appears (``gradpilot watch --stop-file``, from outside the process)."""
        del args, kwargs
        if self.stop_file is not None and self.stop_file.exists():
            control.should_training_stop = True
            self.monitor.record(state.global_step, "stopped", f"stopped: {self.stop_file} appeared")

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        step = state.global_step
        if "loss" in logs:
            self._on_loss(args, state, logs, kwargs)
        if "eval_loss" in logs:
            overfit = self.monitor.end_epoch(step, float(logs["eval_loss"]))
            if self.monitor.autopilot and overfit:
                control.should_training_stop = True
                kept = " (the best checkpoint is loaded at the end)" if args.load_best_model_at_end else \
                    " (set load_best_model_at_end=True to get the best weights back)"
                self.monitor.record(step, "overfitting", f"stopped training: {overfit[0].evidence}{kept}")

    def _on_loss(self, args: TrainingArguments, state: TrainerState, logs: dict[str, float],
                 kwargs: dict[str, Any]) -> None:
        """A logged training loss: into the monitor; the autopilot and the probe act on what it finds."""
        step = state.global_step
        new = self.monitor.update(step, _true_loss(logs), logs.get("learning_rate"))
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        if self.monitor.autopilot and model is not None and optimizer is not None:
            steer(new, self.monitor, self.good, step, model, optimizer, kwargs.get("lr_scheduler"))
        if self.probe and (self._pending or any(f.lr is not None and not f.sure for f in new)):
            self._pending = not self._measure(args, state, step, kwargs)  # again once validation has run

    def _measure(self, args: TrainingArguments, state: TrainerState, step: int, kwargs: dict[str, Any]) -> bool:
        """Probe the run as it stands (the trainer's model, optimizer, dataloaders) and act on it under autopilot;
        False where the trainer has not validated yet (it hands over its eval dataloader only then)."""
        from gradpilot.probing.measure import probe_live
        from gradpilot.schedules import builders as schedules

        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        train, evaluation = kwargs.get("train_dataloader"), kwargs.get("eval_dataloader")
        if model is None or optimizer is None or train is None or evaluation is None:
            return False
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        try:
            found = probe_live(_live_task(model, inner, train, evaluation, args, state), inner,
                               share=self.probe_share, history=self.monitor.history())
        except GradpilotError as exc:  # a probe that cannot measure never stops the user's training
            log.warning("gradpilot probe at step %d skipped: %s", step, exc)
            return True
        self.probes.append((step, found))
        log.warning("gradpilot probe at step %d: the learning rate %.3g is %s (use %.3g), measured on %.1f%% of a run",
                    step, found.learning_rate, found.verdict, found.suggested_learning_rate, 100 * found.cost_runs)
        if self.monitor.autopilot and found.verdict in ("too high", "too low"):
            factor = found.suggested_learning_rate / found.learning_rate
            before, after = schedules.multiply_lr(inner, kwargs.get("lr_scheduler"), factor)
            self.monitor.record(step, "probe", f"probe: lr {before:.3g} → {after:.3g} ({found.verdict})")
        return True

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,  # noqa: ARG002
                     **kwargs: Any) -> None:  # noqa: ARG002 (the signature is TrainerCallback's)
        if self.monitor.steps:
            folder = Path(args.output_dir or ".")
            self.output = self.monitor.write_json(folder / DIAGNOSIS_FILE, "transformers.Trainer (gradpilot callback)")



def _live_task(model: torch.nn.Module, optimizer: torch.optim.Optimizer, train: Any, evaluation: Any,
               args: TrainingArguments, state: TrainerState) -> Task:
    """The run in progress as a ``Task`` (``probing.live_task``): the trainer's model (its own loss from the
    batch), dataloaders and optimizer; one run is the trainer's whole run, in items."""
    items = max(1, state.max_steps) * args.per_device_train_batch_size * args.gradient_accumulation_steps
    return live_task(model, optimizer, train, evaluation, _own_loss, items=items,
                     max_grad_norm=args.max_grad_norm if args.max_grad_norm else None,
                     batch_size=args.per_device_train_batch_size, accumulation=args.gradient_accumulation_steps)


def _own_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """The loss a Hugging Face model computes from a batch that holds its labels."""
    loss: torch.Tensor = model(**batch).loss
    return loss


def _true_loss(logs: dict[str, float]) -> float:
    """The logged loss, or NaN where the trainer's NaN filter logged 0.0 over a NaN gradient norm."""
    return math.nan if hidden_nan(logs["loss"], logs.get("grad_norm")) else float(logs["loss"])
