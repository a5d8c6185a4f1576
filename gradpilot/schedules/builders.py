"""Learning-rate schedules by name, built on ``torch.optim.lr_scheduler`` (nothing re-derived)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.optim import lr_scheduler

from gradpilot import _validate
from gradpilot.errors import GradpilotError
from gradpilot.schedules import factor as lr_factor

MAX_CURVE_STEPS = 5_000_000  # about 10 s of torch scheduler steps


@dataclass(frozen=True)
class Schedule:
    """A torch scheduler and how the loop drives it: every optimizer ``"step"`` or every ``"epoch"``."""

    scheduler: Any
    interval: Literal["step", "epoch"]
    needs_metric: bool = False

    def step(self, metric: float | None = None) -> None:
        """Advance the scheduler; plateau schedulers are given the validation metric."""
        if self.needs_metric:
            if metric is None:
                raise GradpilotError("the plateau scheduler needs a validation metric: pass val_loader")
            self.scheduler.step(metric)
        else:
            self.scheduler.step()


def _constant(opt: torch.optim.Optimizer, _total_steps: int) -> Schedule:
    return Schedule(lr_scheduler.LambdaLR(opt, lambda _: 1.0), "step")


def _step(opt: torch.optim.Optimizer, _total_steps: int, *, step_size: int = 1, gamma: float = 0.1) -> Schedule:
    _validate.positive_int("step_size", step_size)
    _validate.positive_float("gamma", gamma)
    return Schedule(lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma), "epoch")


def _cosine(opt: torch.optim.Optimizer, total_steps: int, *, T_max: int | None = None,
            eta_min: float = 0.0) -> Schedule:
    _check_floor("eta_min", eta_min, opt)
    return Schedule(lr_scheduler.CosineAnnealingLR(opt, T_max=T_max or total_steps, eta_min=eta_min), "step")


def _plateau(opt: torch.optim.Optimizer, _total_steps: int, *, mode: Literal["min", "max"] = "min", patience: int = 2,
             factor: float = 0.5, min_lr: float = 0.0) -> Schedule:
    sched = lr_scheduler.ReduceLROnPlateau(opt, mode=mode, patience=patience, factor=factor, min_lr=min_lr)
    return Schedule(sched, "epoch", needs_metric=True)


def _onecycle(opt: torch.optim.Optimizer, total_steps: int, *, max_lr: float | None = None,
              pct_start: float = 0.3, div_factor: float = 25.0, final_div_factor: float = 1e4) -> Schedule:
    peak = max_lr if max_lr is not None else [g["lr"] for g in opt.param_groups]
    sched = lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=total_steps, pct_start=pct_start,
                                    div_factor=div_factor, final_div_factor=final_div_factor)
    return Schedule(sched, "step")


def _warmup_cosine(opt: torch.optim.Optimizer, total_steps: int, *, warmup_ratio: float = 0.05,
                   warmup_steps: int | None = None, eta_min: float = 0.0) -> Schedule:
    _check_floor("eta_min", eta_min, opt)
    warm = warmup_steps if warmup_steps is not None else round(warmup_ratio * total_steps)
    if not 0 < warm < total_steps:
        raise GradpilotError(f"warmup must last between 1 and {total_steps - 1} steps, got {warm}: "
                             "adjust warmup_ratio or warmup_steps")
    warmup = lr_scheduler.LinearLR(opt, start_factor=1.0 / warm, end_factor=1.0, total_iters=warm)
    decay = lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps - warm, eta_min=eta_min)
    return Schedule(lr_scheduler.SequentialLR(opt, [warmup, decay], milestones=[warm]), "step")


def _check_floor(name: str, floor: float, opt: torch.optim.Optimizer) -> None:
    """A decay's floor must lie below every param group's LR: at or above it, the "decay" would hold or raise it."""
    lowest = min(float(g["lr"]) for g in opt.param_groups)
    if not 0 <= floor < lowest:
        raise GradpilotError(f"{name}={floor:g} must be at least 0 and below the learning rate ({lowest:g}): "
                             "the schedule would hold or raise the LR instead of decaying it")


def _check_warmup(warmup_steps: int, total_steps: int) -> None:
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise GradpilotError(f"warmup_steps must be a whole number of steps, 0 or more, got {warmup_steps!r}")
    if warmup_steps and warmup_steps >= total_steps:
        raise GradpilotError(f"warmup_steps={warmup_steps} is not shorter than the run ({total_steps} steps): the LR "
                             "would never reach its peak; give fewer warmup steps")


def _constant_with_warmup(opt: torch.optim.Optimizer, total_steps: int, *, warmup_steps: int = 0) -> Schedule:
    """transformers' ``constant_with_warmup``: linear from 0 over ``warmup_steps``, then constant."""
    _check_warmup(warmup_steps, total_steps)
    return _lambda(opt, lr_factor.Wsd(warmup_steps))


def _linear(opt: torch.optim.Optimizer, total_steps: int, *, warmup_steps: int = 0) -> Schedule:
    """transformers' ``linear``: warmup, then a straight line to 0 at ``total_steps``."""
    _check_warmup(warmup_steps, total_steps)
    return _lambda(opt, lr_factor.Wsd(warmup_steps, 0, total_steps - warmup_steps))


def _cosine_with_min_lr(opt: torch.optim.Optimizer, total_steps: int, *, warmup_steps: int = 0,
                        min_lr: float | None = None, min_lr_rate: float | None = None) -> Schedule:
    """transformers' ``cosine_with_min_lr``: warmup from 0, then half a cosine down to ``min_lr`` (absolute) or
    ``min_lr_rate`` × the optimizer's LR."""
    if (min_lr is None) == (min_lr_rate is None):
        raise GradpilotError("cosine_with_min_lr takes exactly one of min_lr or min_lr_rate")
    _check_warmup(warmup_steps, total_steps)
    if min_lr is not None:
        _check_floor("min_lr", min_lr, opt)
    elif not 0 <= float(min_lr_rate) < 1:  # type: ignore[arg-type]
        raise GradpilotError(f"min_lr_rate must be in [0, 1), a share of the LR, got {min_lr_rate=}")
    rate = min_lr_rate if min_lr_rate is not None else float(min_lr) / opt.defaults["lr"]  # type: ignore[arg-type]
    return _lambda(opt, cosine_with_min_lr(warmup_steps, total_steps, rate))


def cosine_with_min_lr(warmup_steps: int, total_steps: int, rate: float) -> lr_factor.Wsd:
    """transformers' ``cosine_with_min_lr`` as a ``Wsd``: no stable phase, its warmup rising from 0."""
    return lr_factor.Wsd(warmup_steps, 0, total_steps - warmup_steps, rate, "cosine", warmup_from_floor=False)


def _lambda(opt: torch.optim.Optimizer, schedule: lr_factor.Wsd) -> Schedule:
    """A per-step ``LambdaLR`` over the one LR function (``lr_factor``)."""
    return Schedule(lr_scheduler.LambdaLR(opt, schedule.factor), "step")


BUILDERS: dict[str, Callable[..., Schedule]] = {
    "constant": _constant,
    "step": _step,
    "cosine": _cosine,
    "plateau": _plateau,
    "onecycle": _onecycle,
    "warmup_cosine": _warmup_cosine,
    # the names and formulas of transformers' get_scheduler, so a plan means the same in a Trainer
    "constant_with_warmup": _constant_with_warmup,
    "linear": _linear,
    "cosine_with_min_lr": _cosine_with_min_lr,
}


def options_of(name: str) -> list[str]:
    """The options a named schedule accepts."""
    return [p for p in inspect.signature(_builder(name)).parameters if p not in ("opt", "total_steps", "_total_steps")]


def _builder(name: str) -> Callable[..., Schedule]:
    try:
        return BUILDERS[name]
    except KeyError:
        raise GradpilotError(f"unknown scheduler {name!r}; choose one of {list(BUILDERS)}") from None


def make_schedule(name: str, optimizer: torch.optim.Optimizer, *, total_steps: int, **options: Any) -> Schedule:
    """Build the named schedule for a run of ``total_steps`` optimizer steps."""
    builder = _builder(name)
    unknown = set(options) - set(options_of(name))
    if unknown:
        raise GradpilotError(f"scheduler {name!r} takes no option {sorted(unknown)}; it takes {options_of(name)}")
    if total_steps < 1:
        raise GradpilotError(f"total_steps must be at least 1, got {total_steps=}")
    return builder(optimizer, total_steps, **options)


def wrap(scheduler: Any) -> Schedule:
    """A user's own torch scheduler: plateau ones step per epoch on the metric, all others per optimizer step."""
    if isinstance(scheduler, Schedule):
        return scheduler
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        return Schedule(scheduler, "epoch", needs_metric=True)
    if isinstance(scheduler, lr_scheduler.LRScheduler):
        return Schedule(scheduler, "step")
    raise GradpilotError(f"scheduler must be a name ({list(BUILDERS)}) or a torch LR scheduler, "
                         f"got {type(scheduler).__name__}")


def lr_curve(name: str, *, steps: int, lr: float = 1e-3, steps_per_epoch: int = 1, metrics: list[float] | None = None,
             **options: Any) -> list[float]:
    """The LR at each optimizer step of a run under the named schedule, for printing and plotting.

    Epoch schedules advance every ``steps_per_epoch`` steps; plateau schedules read ``metrics`` (one per epoch).
    """
    _validate.positive_int("steps", steps)
    _validate.positive_int("steps_per_epoch", steps_per_epoch)
    _validate.positive_float("lr", lr)
    if steps > MAX_CURVE_STEPS:
        raise GradpilotError(f"steps={steps:,} is more than the {MAX_CURVE_STEPS:,} a curve is drawn for: "
                             "the shape is the same at a tenth of the steps")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    epochs = -(-steps // steps_per_epoch)
    sched = make_schedule(name, opt, total_steps=steps, **options)
    if sched.needs_metric and (metrics is None or len(metrics) < epochs):
        raise GradpilotError(f"the plateau schedule needs one metric per epoch ({epochs}) to draw its curve")
    opt.step()  # once, so torch sees the optimizer stepped; without gradients it changes nothing
    out = []
    for i in range(steps):
        out.append(opt.param_groups[0]["lr"])
        if sched.interval == "step":
            sched.step()
        elif (i + 1) % steps_per_epoch == 0:
            sched.step(metrics[(i + 1) // steps_per_epoch - 1] if metrics is not None and sched.needs_metric else None)
    return out


def multiply_lr(optimizer: torch.optim.Optimizer, schedule: Schedule | lr_scheduler.LRScheduler | None,
                factor: float) -> tuple[float, float]:
    """Multiply the learning rate by ``factor`` wherever it lives — each param group, and the base LRs the
    schedule (a gradpilot ``Schedule`` or any torch scheduler, and the schedules it chains) computes from — so
    that the rest of the run follows the same curve, scaled. Returns the first group's LR before and after."""
    before = optimizer.param_groups[0]["lr"]
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):
            if key in group:
                group[key] *= factor
    stack: list[Any] = [getattr(schedule, "scheduler", schedule)] if schedule is not None else []
    while stack:
        sched = stack.pop()
        if hasattr(sched, "base_lrs"):
            sched.base_lrs = [lr * factor for lr in sched.base_lrs]
        if isinstance(sched, lr_scheduler.ReduceLROnPlateau):
            sched.min_lrs = [lr * factor for lr in sched.min_lrs]
        stack.extend(getattr(sched, "_schedulers", []))  # SequentialLR and ChainedScheduler keep their parts here
    return before, optimizer.param_groups[0]["lr"]
