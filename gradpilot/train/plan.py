"""A plan — what ``gradpilot tune`` writes to ``plan.yaml``, in Hugging Face ``TrainingArguments`` names — as
gradpilot trains it (``fit(task, plan=...)``, ``gradpilot train --plan``): the LR, batch, accumulation, epochs,
schedule and optimizer settings, read and checked in one place, every bad value one line.

A plan means what transformers means by it: ``lr_scheduler_type`` and its ``lr_scheduler_kwargs`` give the LRs
``transformers.get_scheduler`` gives over the run's optimizer steps — ``ceil(ceil(items / processes / batch) /
accumulation)`` an epoch — and ``warmup_steps`` is steps, or a share of the run below 1. A schedule that cannot
hold at the run's length (its decay longer than the run, a stable phase written for another length) is refused,
never trained silently flat.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradpilot.errors import GradpilotError, describe
from gradpilot.schedules.catalog import CATALOG
from gradpilot.train.data import shard_items
from gradpilot.train.task import Task

# how the plan names each setting gradpilot trains by; every other TrainingArguments name is left to the task
OPTIMIZER_FIELDS = ("optim", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "optim_args")
FIELDS = ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
          "max_steps", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio", "max_grad_norm",
          *OPTIMIZER_FIELDS)
OPTIM_NAMES = {"adamw": ("adamw_torch", "adamw_torch_fused", "adamw_hf"), "sgd": ("sgd",), "rmsprop": ("rmsprop",),
               "adagrad": ("adagrad",)}  # the optim names a task's optimizer answers to
_TORCH_DEFAULTS = {"betas": (0.9, 0.999), "eps": 1e-8, "momentum": 0.0, "dampening": 0.0, "nesterov": False,
                   "alpha": 0.99, "centered": False, "lr_decay": 0.0}
_OPTIM_ARGS = {"sgd": ("momentum", "dampening", "nesterov"), "rmsprop": ("momentum", "alpha", "eps", "centered"),
               "adagrad": ("lr_decay", "eps")}


@dataclass(frozen=True)
class Plan:
    """A plan as gradpilot trains it. ``optimizer`` holds the optimizer settings the plan names (``optim``,
    ``weight_decay``, ...); ``max_grad_norm`` None keeps the task's clipping; ``ignored`` names the plan's other
    ``TrainingArguments``, which the task decides here."""

    learning_rate: float
    batch_size: int
    accumulation: int
    epochs: int
    scheduler: str = "constant"
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    warmup_steps: float = 0
    optimizer: dict[str, Any] = field(default_factory=dict)
    max_grad_norm: float | None = None
    ignored: tuple[str, ...] = ()

    @staticmethod
    def read(source: str | Path | dict[str, Any]) -> Plan:
        """The plan in a YAML file (``plan.yaml``) or a dict of ``TrainingArguments`` names."""
        values = _load(source) if not isinstance(source, dict) else dict(source)
        return Plan(
            learning_rate=_number(values, "learning_rate", None),
            batch_size=_whole(values, "per_device_train_batch_size"),
            accumulation=_whole(values, "gradient_accumulation_steps", 1), epochs=_epochs(values),
            scheduler=str(values.get("lr_scheduler_type", "constant")),
            scheduler_kwargs=_kwargs(values.get("lr_scheduler_kwargs")), warmup_steps=_warmup(values),
            optimizer={k: values[k] for k in OPTIMIZER_FIELDS if k in values},
            max_grad_norm=_clipping(values.get("max_grad_norm")),
            ignored=tuple(sorted(k for k in values if k not in FIELDS)))

    def steps_per_epoch(self, items: int, world: int = 1) -> int:
        """Optimizer steps in one epoch of ``items`` over ``world`` processes, as the Trainer counts them."""
        return math.ceil(math.ceil(shard_items(items, world) / self.batch_size) / self.accumulation)

    def schedule(self) -> tuple[str, dict[str, Any]]:
        """The schedule as ``fit`` builds it: a name of ``schedules.catalog`` and its options. transformers'
        ``cosine`` (warmup, then half a cosine to 0) is its ``cosine_with_min_lr`` with a floor of 0."""
        name, kwargs = self.scheduler, dict(self.scheduler_kwargs)
        if name == "cosine":
            name, kwargs = "cosine_with_min_lr", {"min_lr_rate": 0.0, **kwargs}
        known = CATALOG.get(name)
        if known is None or not known.transformers:
            plannable = ", ".join(n for n, e in CATALOG.items() if e.transformers)
            raise GradpilotError(f"lr_scheduler_type {name!r} is not one gradpilot trains from a plan; use one of "
                                 f"{plannable} or cosine")
        if "warmup_steps" in known.options:
            kwargs["warmup_steps"] = self.warmup_steps
        elif self.warmup_steps:
            raise GradpilotError(f"lr_scheduler_type {name} has no warmup: set warmup_steps to 0, or use "
                                 "constant_with_warmup")
        return name, kwargs


def _load(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise GradpilotError(f"plan {path} does not exist: give the plan.yaml a `gradpilot tune` wrote")
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise GradpilotError(f"plan {path} cannot be read ({describe(exc, 160)}): give a YAML file of "
                             "TrainingArguments names") from None
    if not isinstance(values, dict):
        raise GradpilotError(f"plan {path} holds no TrainingArguments (a YAML mapping of names to values)")
    return values


def _number(values: dict[str, Any], name: str, default: float | None) -> float:
    value = values.get(name, default)
    if value is None:
        raise GradpilotError(f"the plan has no {name}: give it (e.g. {name}: 0.001)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise GradpilotError(f"the plan's {name} must be a positive number, got {value!r}")
    return float(value)


def _whole(values: dict[str, Any], name: str, default: int | None = None) -> int:
    value = values.get(name, default)
    if value is None:
        raise GradpilotError(f"the plan has no {name}: give it (e.g. {name}: 32)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise GradpilotError(f"the plan's {name} must be a whole number of at least 1, got {value!r}")
    return int(value)


def _epochs(values: dict[str, Any]) -> int:
    if float(values.get("max_steps", -1) or -1) > 0:
        raise GradpilotError("the plan sets max_steps: gradpilot trains whole epochs; give num_train_epochs and "
                             "drop max_steps")
    return _whole(values, "num_train_epochs")


def _kwargs(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GradpilotError(f"the plan's lr_scheduler_kwargs must be a mapping, got {value!r}")
    return dict(value)


def _warmup(values: dict[str, Any]) -> float:
    steps, ratio = values.get("warmup_steps", 0) or 0, values.get("warmup_ratio", 0) or 0
    if steps and ratio:
        raise GradpilotError("the plan gives both warmup_steps and warmup_ratio: keep one")
    value = steps or ratio
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise GradpilotError(f"the plan's warmup must be steps or a share of the run, got {value!r}")
    return value


def _clipping(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise GradpilotError(f"the plan's max_grad_norm must be 0 (no clipping) or more, got {value!r}")
    return float(value)


def plan_options(task: Task, source: str | Path | dict[str, Any], options: dict[str, Any], *, seed: int,
                 lr: float | None = None) -> dict[str, Any]:
    """``fit``'s options for training ``task`` on a plan from the task's weights: its optimizer at the plan's LR
    and settings, its data at the plan's batch in the seed's order, the plan's accumulation, epochs and schedule;
    what the caller gave explicitly wins, and what the plan does not say is the task's."""
    plan = Plan.read(source)
    if plan.ignored:
        warnings.warn(f"the plan's {', '.join(plan.ignored)} are TrainingArguments gradpilot leaves to the task",
                      stacklevel=3)
    if not isinstance(task.train_data, torch.utils.data.Dataset) and plan.batch_size != task.batch_size:
        raise GradpilotError(f"the task gives a ready DataLoader of batch {task.batch_size}; the plan's batch is "
                             f"{plan.batch_size}: give the task a Dataset so the plan's batch can be made")
    torch.manual_seed(seed)  # the same task, plan and seed train the same run (dropout too)
    optimizer = task.make_optimizer(plan.learning_rate if lr is None else lr)
    apply_optimizer(optimizer, plan.optimizer, task)
    name, kwargs = plan.schedule()
    clip = task.max_grad_norm if plan.max_grad_norm is None else plan.max_grad_norm or None
    sized = dataclasses.replace(task, batch_size=plan.batch_size)
    own = {"optimizer": optimizer, "loss_fn": task.loss_fn, "train_loader": sized.train_loader(seed),
           "val_loader": task.val_loader(), "epochs": plan.epochs, "accumulation_steps": plan.accumulation,
           "scheduler": name, "scheduler_options": kwargs, "step_fn": task.step_fn, "max_grad_norm": clip,
           "precision": task.precision, "metric": task.metric, "higher_is_better": task.higher_is_better}
    given = {k: v for k, v in options.items() if v is not None and v != {} and k in own and k != "higher_is_better"}
    return {**options, **own, **given}


def optimizer_arguments(task: Task) -> tuple[dict[str, Any], str]:
    """``optim``, ``weight_decay`` and the optimizer's other settings as the task makes them, in HF's names, and
    why (one line)."""
    opt = task.make_optimizer()
    group, kind = opt.param_groups[0], _kind(opt)
    decay = float(group.get("weight_decay", 0.0))
    out: dict[str, Any] = {"weight_decay": decay}
    if kind == "adamw":
        out["optim"] = "adamw_torch"
        beta1, beta2 = group["betas"]
        out.update(adam_beta1=float(beta1), adam_beta2=float(beta2), adam_epsilon=float(group["eps"]))
    elif kind in _OPTIM_ARGS:
        out["optim"] = kind
        extra = [f"{k}={group[k]}" for k in _OPTIM_ARGS[kind] if k in group and group[k] != _TORCH_DEFAULTS[k]]
        if extra:
            out["optim_args"] = ",".join(extra)
    else:
        return {"weight_decay": decay}, (f"the task's optimizer ({type(opt).__name__}) has no TrainingArguments name: "
                                         "give it to the Trainer yourself (Trainer(optimizers=...))")
    note = " (HF decays all but biases and LayerNorm weights)" if decay else ""
    return out, f"as the task had it{note}"


def _kind(optimizer: torch.optim.Optimizer) -> str:
    kind = type(optimizer).__name__.lower()
    if kind == "adam" and float(optimizer.param_groups[0].get("weight_decay", 0.0)) == 0.0:
        return "adamw"  # Adam without weight decay is AdamW without it
    return kind


def apply_optimizer(optimizer: torch.optim.Optimizer, settings: dict[str, Any], task: Task) -> None:
    """The plan's optimizer settings on the task's optimizer: ``optim`` must name the task's kind of optimizer;
    ``weight_decay`` goes to the groups that decay (a group the task keeps undecayed stays so), betas and eps
    and ``optim_args`` to every group."""
    own, _ = optimizer_arguments(task)
    optim = settings.get("optim")
    if optim is not None and optim not in OPTIM_NAMES.get(_kind(optimizer), (own.get("optim"),)):
        raise GradpilotError(f"the plan's optim is {optim!r}, the task's optimizer is {type(optimizer).__name__}: "
                             "gradpilot trains the task's optimizer; change the task, or the plan's optim")
    groups = optimizer.param_groups
    for group in groups:
        decays = float(group.get("weight_decay", 0.0)) or len(groups) == 1
        group.update(_group_settings(settings, group, decays=bool(decays)))


def _group_settings(settings: dict[str, Any], group: dict[str, Any], *, decays: bool) -> dict[str, Any]:
    """What the plan's settings change in one param group."""
    out: dict[str, Any] = {}
    if "weight_decay" in settings and decays:
        out["weight_decay"] = float(settings["weight_decay"])
    if "betas" in group and ("adam_beta1" in settings or "adam_beta2" in settings):
        out["betas"] = (float(settings.get("adam_beta1", group["betas"][0])),
                        float(settings.get("adam_beta2", group["betas"][1])))
    if "adam_epsilon" in settings and "eps" in group:
        out["eps"] = float(settings["adam_epsilon"])
    return {**out, **_optim_args(settings.get("optim_args"), group)}


def _optim_args(text: Any, group: dict[str, Any]) -> dict[str, Any]:
    """``optim_args`` (``momentum=0.9,nesterov=True``) as values of the group's own types."""
    if not text:
        return {}
    out: dict[str, Any] = {}
    for item in str(text).split(","):
        key, _, raw = item.partition("=")
        key = key.strip()
        if key not in group:
            raise GradpilotError(f"the plan's optim_args names {key!r}, which the task's optimizer does not take")
        kind = type(group[key])
        out[key] = raw.strip() == "True" if kind is bool else kind(raw.strip())
    return out
