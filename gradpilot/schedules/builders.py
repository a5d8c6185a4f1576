"""Learning-rate schedules by name (``catalog``), built on ``torch.optim.lr_scheduler``: torch's own classes for
torch's schedules, and transformers' schedules as a ``LambdaLR`` over the one LR function (``factor``), so a
plan's ``lr_scheduler_type`` means the same LRs here as in a ``Trainer``."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.optim import lr_scheduler

from gradpilot import _validate
from gradpilot.errors import GradpilotError
from gradpilot.schedules import factor as lr_factor
from gradpilot.schedules.catalog import CATALOG, NAMES, entry

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


def warmup_steps_of(warmup_steps: float, total_steps: int) -> int:
    """``warmup_steps`` as ``TrainingArguments`` takes it — a whole number of steps, or a share of the run in
    (0, 1) (``ceil(total × share)``, as ``get_warmup_steps`` counts it) — in steps, shorter than the run."""
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, float)) or not (
            warmup_steps == int(warmup_steps) or 0 < warmup_steps < 1) or warmup_steps < 0:
        raise GradpilotError(f"warmup_steps must be a whole number of steps, or a share of the run in (0, 1), got "
                             f"{warmup_steps!r}")
    steps = int(warmup_steps) if warmup_steps >= 1 or warmup_steps == 0 else math.ceil(total_steps * warmup_steps)
    if steps and steps >= total_steps:
        raise GradpilotError(f"warmup_steps={warmup_steps} is not shorter than the run ({total_steps} steps): the LR "
                             "would never reach its peak; give fewer warmup steps")
    return steps


def _constant_with_warmup(opt: torch.optim.Optimizer, total_steps: int, *, warmup_steps: float = 0) -> Schedule:
    """transformers' ``constant_with_warmup``: linear from 0 over ``warmup_steps``, then constant."""
    return _lambda(opt, lr_factor.Wsd(warmup_steps_of(warmup_steps, total_steps)))


def _linear(opt: torch.optim.Optimizer, total_steps: int, *, warmup_steps: float = 0) -> Schedule:
    """transformers' ``linear``: warmup, then a straight line to 0 at ``total_steps``."""
    warm = warmup_steps_of(warmup_steps, total_steps)
    return _lambda(opt, lr_factor.Wsd(warm, 0, total_steps - warm))


def _warmup_stable_decay(opt: torch.optim.Optimizer, total_steps: int, *, warmup_steps: float = 0,
                         num_decay_steps: int | None = None, num_stable_steps: int | None = None,
                         decay_type: str = "cosine", min_lr_ratio: float = 0.0) -> Schedule:
    """transformers' ``warmup_stable_decay``: warmup (rising from ``min_lr_ratio``), the peak held, then a decay
    over the last ``num_decay_steps`` to ``min_lr_ratio`` × the LR. The stable phase is what the run leaves
    (``num_stable_steps`` may only say that same number)."""
    return _lambda(opt, wsd_schedule(total_steps, warmup_steps_of(warmup_steps, total_steps), num_decay_steps,
                                     num_stable_steps, decay_type, min_lr_ratio))


def wsd_schedule(total_steps: int, warmup: int, decay: int | None, stable: int | None, decay_type: str,
                 min_ratio: float) -> lr_factor.Wsd:
    """The ``Wsd`` of a warmup–stable–decay run of ``total_steps``; one that cannot hold there (a decay longer
    than the run leaves, a stable phase written for another length) is refused in one line."""
    if decay is None or isinstance(decay, bool) or not isinstance(decay, int) or decay < 1:
        raise GradpilotError(f"warmup_stable_decay needs num_decay_steps, a whole number of steps of at least 1, "
                             f"got {decay!r}")
    if decay_type not in lr_factor.DECAY_TYPES:
        raise GradpilotError(f"decay_type must be one of {', '.join(lr_factor.DECAY_TYPES)}, got {decay_type!r}")
    if not 0 <= min_ratio < 1:
        raise GradpilotError(f"min_lr_ratio must be in [0, 1), a share of the LR, got {min_ratio!r}")
    if warmup + decay > total_steps:
        raise GradpilotError(f"the warmup ({warmup} steps) and the decay ({decay} steps) are longer than the run "
                             f"({total_steps} steps): the LR would never decay to its end; give fewer decay steps")
    left = total_steps - warmup - decay
    if stable is not None and stable != left:
        raise GradpilotError(f"num_stable_steps={stable} was written for a run of {warmup + stable + decay} steps; "
                             f"this one has {total_steps}, so the LR would not end decayed: drop num_stable_steps "
                             "(the stable phase is then what the run leaves)")
    return lr_factor.Wsd(warmup, left, decay, float(min_ratio), decay_type)


def _cosine_with_min_lr(opt: torch.optim.Optimizer, total_steps: int, *, warmup_steps: float = 0,
                        min_lr: float | None = None, min_lr_rate: float | None = None) -> Schedule:
    """transformers' ``cosine_with_min_lr``: warmup from 0, then half a cosine down to ``min_lr`` (absolute) or
    ``min_lr_rate`` × the optimizer's LR."""
    if (min_lr is None) == (min_lr_rate is None):
        raise GradpilotError("cosine_with_min_lr takes exactly one of min_lr or min_lr_rate")
    warm = warmup_steps_of(warmup_steps, total_steps)
    if min_lr is not None:
        _check_floor("min_lr", min_lr, opt)
    elif not 0 <= float(min_lr_rate) < 1:  # type: ignore[arg-type]
        raise GradpilotError(f"min_lr_rate must be in [0, 1), a share of the LR, got {min_lr_rate=}")
    rate = min_lr_rate if min_lr_rate is not None else float(min_lr) / opt.defaults["lr"]  # type: ignore[arg-type]
    return _lambda(opt, cosine_with_min_lr(warm, total_steps, rate))


def cosine_with_min_lr(warmup_steps: int, total_steps: int, rate: float) -> lr_factor.Wsd:
    """transformers' ``cosine_with_min_lr`` as a ``Wsd``: no stable phase, its warmup rising from 0."""
    return lr_factor.Wsd(warmup_steps, 0, total_steps - warmup_steps, rate, "cosine", warmup_from_floor=False)


def _lambda(opt: torch.optim.Optimizer, schedule: lr_factor.Wsd) -> Schedule:
    """A per-step ``LambdaLR`` over the one LR function (``lr_factor``)."""
    return following(opt, schedule)


def following(optimizer: torch.optim.Optimizer, schedule: lr_factor.Wsd, at_step: int = 0) -> Schedule:
    """The one LR mechanism of gradpilot's runs: a per-step ``LambdaLR`` multiplying each param group's
    ``initial_lr`` by ``schedule.factor(step)``, set for step ``at_step`` (a branch decaying from a run part-way
    through; the groups keep the ``initial_lr`` the run's own scheduler gave them)."""
    if at_step == 0:
        return Schedule(lr_scheduler.LambdaLR(optimizer, schedule.factor), "step")
    return Schedule(lr_scheduler.LambdaLR(optimizer, schedule.factor, last_epoch=at_step - 1), "step")


# one builder per name of the catalog (``catalog.CATALOG``): the builder of ``name`` is ``_name``
BUILDERS: dict[str, Callable[..., Schedule]] = {name: globals()[f"_{name}"] for name in NAMES}


def _options(builder: Callable[..., Schedule]) -> tuple[str, ...]:
    return tuple(p for p in inspect.signature(builder).parameters if p not in ("opt", "total_steps", "_total_steps"))


for _name, _build in BUILDERS.items():  # the catalog and the builders say the same, or the import fails
    if _options(_build) != CATALOG[_name].options:
        raise ImportError(f"schedule {_name!r}: its builder takes {_options(_build)}, the catalog says "
                          f"{CATALOG[_name].options}")


def options_of(name: str) -> list[str]:
    """The options a named schedule accepts."""
    return list(entry(name).options)


def make_schedule(name: str, optimizer: torch.optim.Optimizer, *, total_steps: int, **options: Any) -> Schedule:
    """Build the named schedule for a run of ``total_steps`` optimizer steps."""
    builder = BUILDERS[entry(name).name]
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
    raise GradpilotError(f"scheduler must be a name ({', '.join(NAMES)}) or a torch LR scheduler, "
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
    that the rest of the run follows the same curve, scaled. The scheduler is changed through its own
    ``state_dict`` / ``load_state_dict``, never its private attributes. Returns the first group's LR before and
    after."""
    before = optimizer.param_groups[0]["lr"]
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):
            if key in group:
                group[key] *= factor
    sched: Any = schedule.scheduler if isinstance(schedule, Schedule) else schedule
    if sched is not None:
        sched.load_state_dict(_scaled(sched.state_dict(), factor))
    return before, optimizer.param_groups[0]["lr"]


def _scaled(state: dict[str, Any], factor: float) -> dict[str, Any]:
    """A scheduler's state with its base LRs (and a plateau's floors, and those of the schedules it chains:
    ``_schedulers`` in SequentialLR's and ChainedScheduler's state) multiplied by ``factor``."""
    out = dict(state)
    for key in ("base_lrs", "min_lrs", "_last_lr"):
        if isinstance(out.get(key), list):
            out[key] = [v * factor for v in out[key]]
    if isinstance(out.get("_schedulers"), list):
        out["_schedulers"] = [_scaled(s, factor) if isinstance(s, dict) else s for s in out["_schedulers"]]
    return out
