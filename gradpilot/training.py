"""``fit``: the training loop every gradpilot recommendation runs in, with exact accumulation and resume."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gradpilot import _checkpoint, schedules
from gradpilot._batch import TARGET_KEYS, LossFn, StepFn, _logits, check_scalar, compute_loss, model_device, to_device
from gradpilot.accumulation import NumItems, comm_device, item_counter, micro_weights, sync_contexts, windows
from gradpilot.early_stopping import EarlyStopping
from gradpilot.errors import GradpilotError
from gradpilot.monitor import Monitor, Snapshot, scale_lr
from gradpilot.task import Task

log = logging.getLogger(__name__)

Metric = Callable[[Any, Any], float]


@dataclass(frozen=True)
class FitResult:
    """What a run did: per-step loss and LR, per-epoch validation metric, best epoch and why it stopped.

    Epochs are counted from 1. ``train_losses[i]`` is the item-weighted mean loss of optimizer step ``i``.
    """

    train_losses: tuple[float, ...]
    lrs: tuple[float, ...]
    val_metrics: tuple[float, ...]
    best_epoch: int | None
    stop_reason: str
    epochs_completed: int
    steps: int
    effective_batch_size: int
    val_losses: tuple[float, ...] = ()
    epoch_steps: tuple[int, ...] = ()
    resumed_from_step: int | None = None
    restored_best: bool = False
    findings: tuple[Any, ...] = ()  # what a Monitor raised while training (gradpilot.diagnose.Finding)
    actions: tuple[Any, ...] = ()  # what its autopilot did (gradpilot.monitor.Action)

    @property
    def best_metric(self) -> float | None:
        """The validation metric at the best epoch."""
        return None if self.best_epoch is None else self.val_metrics[self.best_epoch - 1]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def evaluate(model: nn.Module, loader: Iterable[Any], loss_fn: LossFn | None, metric: Metric | None = None, *,
             step_fn: StepFn | None = None, num_items: NumItems | None = None,
             device: torch.device | None = None) -> float:
    """Mean validation metric (or loss when ``metric`` is None) over ``loader``, weighted by items per batch."""
    loss, value = evaluate_both(model, loader, loss_fn, metric, step_fn=step_fn, num_items=num_items, device=device)
    return loss if metric is None else value  # type: ignore[return-value]


def evaluate_both(model: nn.Module, loader: Iterable[Any], loss_fn: LossFn | None, metric: Metric | None = None, *,
                  step_fn: StepFn | None = None, num_items: NumItems | None = None,
                  device: torch.device | None = None) -> tuple[float, float | None]:
    """Validation loss and metric from one pass over ``loader`` (the metric is None when not asked for)."""
    device = device or model_device(model)
    count = item_counter(loss_fn, num_items)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss × items, metric × items, items
    with torch.no_grad():
        for batch in loader:
            n = count(batch)
            batch = to_device(batch, device)
            if metric is None or step_fn is not None or loss_fn is None:
                loss = compute_loss(model, batch, loss_fn, step_fn).double()
                value = torch.zeros((), dtype=torch.float64, device=device)
            if metric is not None:
                inputs, targets = _split_batch(batch)
                out = _logits(model(**inputs) if isinstance(inputs, dict) else model(inputs))
                if loss_fn is not None and step_fn is None:
                    loss = check_scalar(loss_fn(out, targets)).double()
                value = torch.as_tensor(metric(out, targets), dtype=torch.float64, device=device)
            sums += torch.stack([loss * n, value * n, torch.as_tensor(n, dtype=torch.float64, device=device)])
    model.train(was_training)
    if _world()[0] > 1:
        dist.all_reduce(sums)
    if sums[2].item() == 0:
        raise GradpilotError("the validation loader yielded no items")
    loss_mean, metric_mean = (sums[:2] / sums[2]).tolist()
    return loss_mean, (metric_mean if metric is not None else None)


def _split_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, dict):
        key = next((k for k in TARGET_KEYS if k in batch), None)
        if key is not None:
            return {k: v for k, v in batch.items() if k != key}, batch[key]
    elif isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    raise GradpilotError("a validation metric needs (inputs, targets) or dict batches with a 'labels' key; "
                         "pass metric=None to validate on the loss")


def fit(
    model: nn.Module | Task,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: LossFn | None = None,
    train_loader: Iterable[Any] | None = None,
    *,
    epochs: int | None = None,
    accumulation_steps: int = 1,
    scheduler: str | Any | None = None,
    scheduler_options: dict[str, Any] | None = None,
    val_loader: Iterable[Any] | None = None,
    metric: Metric | None = None,
    higher_is_better: bool = False,
    early_stopping: EarlyStopping | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    num_items: NumItems | None = None,
    step_fn: StepFn | None = None,
    max_grad_norm: float | None = None,
    device: str | torch.device | None = None,
    on_step: Callable[[int, float], None] | None = None,
    monitor: Monitor | None = None,
) -> FitResult:
    """Train for ``epochs`` with exact gradient accumulation, a schedule, validation, early stopping and resume.

    ``model`` may be a ``gradpilot.Task``, which supplies the optimizer, loss, loaders, metric and epochs.
    ``scheduler`` is a name from ``schedules.BUILDERS`` (options in ``scheduler_options``) or a torch scheduler.
    With ``checkpoint_dir`` the run saves every epoch (and every ``checkpoint_every`` optimizer steps) and
    a run started again with the same arguments continues where the last checkpoint left off.
    ``on_step(step, lr)`` is called after every optimizer step. A ``Monitor`` watches the run and raises
    findings; with ``autopilot=True`` fit acts on them (lower the LR on oscillation, roll back to the last
    good state and lower it on divergence or NaN, stop and restore the best weights on overfitting).
    """
    if isinstance(model, Task):
        task = model
        model, optimizer = task.model, optimizer or task.make_optimizer()
        loss_fn = loss_fn or task.loss_fn
        train_loader = train_loader or task.train_loader()
        val_loader = val_loader if val_loader is not None else task.val_loader()
        metric = metric or task.metric
        higher_is_better = task.higher_is_better if metric is task.metric else higher_is_better
        epochs = epochs or task.epochs
    if optimizer is None or train_loader is None:
        raise GradpilotError("fit needs an optimizer and a train_loader (or a gradpilot.Task)")
    if epochs is None or epochs < 1:
        raise GradpilotError(f"epochs must be at least 1, got {epochs=}")
    if accumulation_steps < 1:
        raise GradpilotError(f"accumulation_steps must be at least 1, got {accumulation_steps=}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise GradpilotError(f"checkpoint_every must be at least 1, got {checkpoint_every=}")
    if early_stopping is not None and val_loader is None:
        raise GradpilotError("early stopping watches the validation metric: pass val_loader")
    if max_grad_norm is not None and max_grad_norm <= 0:
        raise GradpilotError(f"max_grad_norm must be positive, got {max_grad_norm=}")

    device = torch.device(device) if device is not None else model_device(model)
    world, rank = _world()
    base = model.module if isinstance(model, DistributedDataParallel) else model
    train_model = model if world == 1 or isinstance(model, DistributedDataParallel) else DistributedDataParallel(model)
    try:
        batches_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        raise GradpilotError("train_loader has no len(): fit needs to know how many batches an epoch holds") from None
    steps_per_epoch = math.ceil(batches_per_epoch / accumulation_steps)
    if steps_per_epoch == 0:
        raise GradpilotError("train_loader yielded no batches: check the dataset is not empty")
    mode = "max" if higher_is_better else "min"
    schedule = _make_schedule(scheduler, scheduler_options or {}, optimizer, steps_per_epoch * epochs, epochs, mode)
    if schedule is not None and schedule.needs_metric and val_loader is None:
        raise GradpilotError("the plateau scheduler reduces the LR when the validation metric stalls: pass val_loader")
    count = item_counter(loss_fn, num_items)
    sync_context = sync_contexts(train_model)
    micro = getattr(train_loader, "batch_size", None) or 0
    fingerprint = {"epochs": epochs, "accumulation_steps": accumulation_steps, "batches_per_epoch": batches_per_epoch,
                   "scheduler": repr((scheduler if isinstance(scheduler, str) else type(scheduler).__name__,
                                      sorted((scheduler_options or {}).items()))), "world_size": world}

    run = _Run()
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    resume = _checkpoint.load(ckpt_dir) if ckpt_dir is not None else None
    if resume is not None:
        if resume["fingerprint"] != fingerprint:
            raise GradpilotError(f"{ckpt_dir} holds a run with other settings ({resume['fingerprint']}); "
                                 "use a new checkpoint_dir or the same arguments")
        run = _restore(resume, base, optimizer, schedule)
        log.info("resuming from %s at epoch %d, step %d", ckpt_dir, run.epoch + 1, run.step)
    resumed_from = None if resume is None else run.step

    def checkpoint(epoch_rng: dict[str, Any], epoch_losses: list[torch.Tensor]) -> None:
        if ckpt_dir is not None and rank == 0:
            state = _snapshot(run, base, optimizer, schedule, fingerprint, epoch_rng, epoch_losses, train_loader)
            _checkpoint.save(state, ckpt_dir)

    stop_reason = f"completed {epochs} epochs"
    autopilot = monitor is not None and monitor.autopilot
    keep_best = early_stopping is not None or autopilot
    good = Snapshot()
    if autopilot:
        good.take(run.step, base, optimizer)
    base.train()
    while run.epoch < epochs:
        skip = 0
        epoch_losses: list[torch.Tensor] = []
        if resume is not None and run.windows_done:
            # mid-epoch: replay the epoch's shuffle, skip the windows already trained, then pick up the RNGs
            epoch_rng, skip = resume["epoch_rng"], run.windows_done
            _checkpoint.set_rng_state(epoch_rng, train_loader)
            epoch_losses = [torch.tensor(v) for v in resume["epoch_losses"]]
        else:
            if resume is not None:
                _checkpoint.set_rng_state(resume["rng"], train_loader)
            epoch_rng = _checkpoint.rng_state(train_loader)
        for w, window in enumerate(windows(train_loader, accumulation_steps)):
            if w < skip:
                if w == skip - 1:
                    _checkpoint.set_rng_state(resume["rng"], train_loader)  # type: ignore[index]
                continue
            single = len(window) == 1 and world == 1
            weights = [1.0] if single else micro_weights([count(b) for b in window], world)
            window_loss: torch.Tensor | None = None
            for j, batch in enumerate(window):
                with sync_context(j == len(window) - 1):
                    loss = compute_loss(train_model, to_device(batch, device), loss_fn, step_fn)
                    # weight = this micro-batch's share of the window's items: the sum equals the large batch's mean
                    scaled = loss if single else loss * weights[j]
                    scaled.backward()
                window_loss = scaled.detach() if window_loss is None else window_loss + scaled.detach()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(base.parameters(), max_grad_norm)
            run.lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if schedule is not None and schedule.interval == "step":
                schedule.step()
            epoch_losses.append(window_loss)  # type: ignore[arg-type]
            run.step += 1
            run.windows_done = w + 1
            if on_step is not None:
                on_step(run.step, run.lrs[-1])
            if monitor is not None:
                new = monitor.update(run.step, window_loss, run.lrs[-1])  # type: ignore[arg-type]
                if autopilot:
                    _steer(new, monitor, good, run.step, base, optimizer, schedule)
            if checkpoint_every is not None and run.step % checkpoint_every == 0:
                checkpoint(epoch_rng, epoch_losses)
        resume = None
        run.losses.extend(_gather_losses(epoch_losses, world))
        run.epoch += 1
        run.windows_done = 0
        value = None
        run.epoch_steps.append(run.step)
        if val_loader is not None:
            val_loss, val_metric = evaluate_both(base, val_loader, loss_fn, metric, step_fn=step_fn,
                                                 num_items=num_items, device=device)
            value = val_loss if val_metric is None else val_metric
            run.val.append(value)
            run.val_losses.append(val_loss)
            log.info("epoch %d: validation %s %.5g", run.epoch, "metric" if metric else "loss", value)
            if keep_best and (early_stopping or EarlyStopping()).best_epoch(run.val, mode) == len(run.val) - 1:
                run.best_state = {k: v.detach().to("cpu", copy=True) for k, v in base.state_dict().items()}
        if schedule is not None and schedule.interval == "epoch":
            schedule.step(value)
        checkpoint(epoch_rng, [])
        if monitor is not None and val_loader is not None:
            overfit = monitor.end_epoch(run.step, run.val_losses[-1])
            if autopilot and overfit:
                monitor.record(run.step, "overfitting", f"stopped after epoch {run.epoch}: {overfit[0].evidence}")
                stop_reason = f"autopilot stopped at epoch {run.epoch}: overfitting"
                break
        if early_stopping is not None and early_stopping.should_stop(run.val, mode):
            best = early_stopping.best_epoch(run.val, mode)
            stop_reason = (f"early stopping at epoch {run.epoch}: no improvement in the validation metric for "
                           f"{early_stopping.patience} epochs (best {run.val[best]:.5g} at epoch {best + 1})"
                           if best is not None else f"early stopping at epoch {run.epoch}: validation metric not finite")
            break

    restored = keep_best and run.best_state is not None
    if restored:
        base.load_state_dict(run.best_state)  # type: ignore[arg-type]
    best_index = (early_stopping or EarlyStopping()).best_epoch(run.val, mode) if run.val else None
    return FitResult(
        train_losses=tuple(run.losses), lrs=tuple(run.lrs), val_metrics=tuple(run.val),
        best_epoch=None if best_index is None else best_index + 1, stop_reason=stop_reason,
        epochs_completed=run.epoch, steps=run.step, effective_batch_size=micro * accumulation_steps * world,
        val_losses=tuple(run.val_losses), epoch_steps=tuple(run.epoch_steps), resumed_from_step=resumed_from,
        restored_best=restored,
        findings=tuple(monitor.findings) if monitor else (), actions=tuple(monitor.actions) if monitor else (),
    )


def _steer(new: list[Any], monitor: Monitor, good: Snapshot, step: int, model: nn.Module,
           optimizer: torch.optim.Optimizer, schedule: schedules.Schedule | None) -> None:
    """The autopilot: act on new findings; after a clean check, remember the state as good."""
    checked = len(monitor.steps) % monitor.check_every == 0
    sched = schedule.scheduler if schedule is not None else None
    for finding in new:
        if finding.kind in ("nan", "divergence"):
            back = good.step
            restored = good.restore(model, optimizer)
            before, after = scale_lr(optimizer, sched, monitor.lr_factor_divergence)
            where = f"rolled back to step {back}" if restored else "no good state to roll back to"
            monitor.record(step, finding.kind, f"{finding.kind}: {where}, lr {before:.3g} → {after:.3g}")
            return
        if finding.kind == "oscillation":
            before, after = scale_lr(optimizer, sched, monitor.lr_factor_oscillation)
            monitor.record(step, finding.kind, f"oscillation: lr {before:.3g} → {after:.3g}")
    if checked and not new:
        good.take(step, model, optimizer)


@dataclass
class _Run:
    """The loop's progress: everything a checkpoint must carry besides model, optimizer and scheduler."""

    epoch: int = 0
    windows_done: int = 0
    step: int = 0
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    val: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    epoch_steps: list[int] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None


def _gather_losses(losses: list[torch.Tensor], world: int) -> list[float]:
    """One host sync per epoch (not per step); under DDP the processes' shares are summed to the global mean."""
    if not losses:
        return []
    stacked = torch.stack([loss.double().reshape(()) for loss in losses])
    if world > 1:
        stacked = stacked.to(comm_device())
        dist.all_reduce(stacked)
        stacked = stacked / world
    return stacked.tolist()


def _make_schedule(scheduler: Any, options: dict[str, Any], optimizer: torch.optim.Optimizer, total_steps: int,
                   epochs: int, mode: str) -> schedules.Schedule | None:
    if scheduler is None:
        if options:
            raise GradpilotError("scheduler_options given without a scheduler name")
        return None
    if isinstance(scheduler, str):
        if scheduler == "plateau":
            options = {"mode": mode, **options}
        return schedules.make_schedule(scheduler, optimizer, total_steps=total_steps, epochs=epochs, **options)
    return schedules.wrap(scheduler)


def _snapshot(run: _Run, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: schedules.Schedule | None,
              fingerprint: dict[str, Any], epoch_rng: dict[str, Any], epoch_losses: list[torch.Tensor],
              loader: Any) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint, "epoch": run.epoch, "windows_done": run.windows_done, "step": run.step,
        "losses": list(run.losses), "lrs": list(run.lrs), "val": list(run.val), "val_losses": list(run.val_losses),
        "epoch_steps": list(run.epoch_steps), "best_state": run.best_state,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": None if schedule is None else schedule.scheduler.state_dict(),
        "epoch_rng": epoch_rng, "rng": _checkpoint.rng_state(loader),
        "epoch_losses": _gather_losses(epoch_losses, 1),
    }


def _restore(saved: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
             schedule: schedules.Schedule | None) -> _Run:
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if schedule is not None and saved["scheduler"] is not None:
        schedule.scheduler.load_state_dict(saved["scheduler"])
    return _Run(epoch=saved["epoch"], windows_done=saved["windows_done"], step=saved["step"],
                losses=saved["losses"], lrs=saved["lrs"], val=saved["val"], val_losses=saved["val_losses"],
                epoch_steps=saved["epoch_steps"], best_state=saved["best_state"])
