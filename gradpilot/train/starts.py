"""Where a run stands, read from the checkpoints people have: everything gradpilot writes — a checkpoint folder
(``fit``'s, ``gradpilot train``'s, a saved run: ``last.pt``), a tune folder, ``model.pt`` — a Hugging Face Trainer
``checkpoint-N`` folder, a Lightning ``.ckpt``, and a plain ``torch.save`` of ``{"model": ..., "optimizer": ...}``
or of a state_dict. Every file is read with ``torch.load(weights_only=True)`` (or safetensors): reading a
checkpoint runs no code from it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradpilot.diagnosis.history import History
from gradpilot.diagnosis.logs import read_log
from gradpilot.errors import GradpilotError, describe
from gradpilot.train import checkpoint

KINDS = ("a gradpilot checkpoint folder or last.pt, a tune folder, model.pt, a Hugging Face checkpoint-N folder, a "
         "Lightning .ckpt, or a torch.save of a state_dict or of {'model': ..., 'optimizer': ...}")
FRESH = "the checkpoint holds no optimizer state: the branches start from a fresh one"


@dataclass(frozen=True)
class Start:
    """A run's state at its checkpoint: model weights keyed as the task's model names them, the optimizer's
    state where the checkpoint holds it, the LR it was training at, and what could not be taken."""

    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    lr: float | None
    notes: tuple[str, ...] = ()
    history: History | None = None  # the run's log up to the checkpoint, where it is kept beside it
    lowered_for_length: bool = False  # a tune's plan whose LR was lowered for the full run's length on purpose


@dataclass(frozen=True)
class _Read:
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    lr: float | None
    log: Path | None
    notes: tuple[str, ...] = ()
    lowered_for_length: bool = False


def read_start(path: Path, model: nn.Module) -> Start:
    """The state saved at ``path``, fitted to ``model``; a checkpoint of another model is refused in one line."""
    if not path.exists():
        raise GradpilotError(f"{path} does not exist: give {KINDS}")
    read = _read(path)
    notes = read.notes + ((FRESH,) if read.optimizer is None else ())
    return Start(fitted(read.weights, model, path), read.optimizer, read.lr, notes, _history(read.log),
                 read.lowered_for_length)


def _read(path: Path) -> _Read:
    """The checkpoint at ``path``, whichever kind it is."""
    if path.is_dir():
        if (path / "trainer_state.json").exists():
            return _hugging_face(path)
        if (path / checkpoint.NAME).exists():
            return _gradpilot(path)
        if (path / "tune.json").exists() or (path / "model.pt").exists():
            return _tune_folder(path)
        raise GradpilotError(f"{path} holds no checkpoint gradpilot reads: give {KINDS}")
    if path.name == checkpoint.NAME:
        return _gradpilot(path.parent)
    if path.suffix == ".ckpt":
        return _lightning(path)
    return _plain(path)


def _history(log: Path | None) -> History | None:
    """The run's log beside its checkpoint, where there is one gradpilot reads (else None: the probe measures)."""
    if log is None or not log.is_file():
        return None
    try:
        return read_log(log)
    except GradpilotError:
        return None


def _gradpilot(folder: Path) -> _Read:
    """gradpilot's one checkpoint format: a folder with ``last.pt`` (``fit``, ``gradpilot train``, a saved run)."""
    state = checkpoint.load(folder)
    if state is None:
        raise GradpilotError(f"{folder} holds no {checkpoint.NAME}")
    lrs = state["record"].get("lrs") or []
    lr = float(lrs[-1]) if lrs else _group_lr(state.get("optimizer"))
    return _Read(state["model"], state.get("optimizer"), lr, folder / "metrics.csv")


def _tune_folder(folder: Path) -> _Read:
    """A tune's folder: the model it trained (``model.pt``) at the plan's learning rate, its final run's log."""
    model = folder / "model.pt"
    if not model.exists():
        raise GradpilotError(f"{folder} holds no model.pt: finish the tune first (run the same `gradpilot tune` "
                             "again)")
    weights = _weights(_safe_load(model), model)
    lr = _plan_lr(folder / "plan.yaml")
    note = (f"a tune folder: its model.pt probed at the plan's learning rate ({lr:.3g})" if lr else
            "a tune folder without plan.yaml: give the LR with --lr")
    return _Read(weights, None, lr, folder / "runs" / "final" / "metrics.csv", (note,), _lowered(folder))


def _lowered(folder: Path) -> bool:
    """Whether the tune lowered its LR for the full run's length, its search having seen every finalist overfit
    within the short runs (``tune.json``: the search's evidence ``overtrained``)."""
    try:
        stage = json.loads((folder / "tune.json").read_text())["stages"]["lr_search"]
        return bool(stage["evidence"]["value"].get("overtrained"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _plan_lr(plan: Path) -> float | None:
    try:
        import yaml

        return float(yaml.safe_load(plan.read_text())["learning_rate"])
    except (OSError, ValueError, TypeError, KeyError, ImportError, AttributeError):
        return None


def _plain(path: Path) -> _Read:
    """A ``torch.save`` of a state_dict (gradpilot's ``model.pt`` among them), or of a dict holding the weights
    under ``model`` (or ``state_dict``, ``model_state_dict``) and the optimizer's state under ``optimizer``."""
    saved = _safe_load(path)
    if not isinstance(saved, dict):
        raise GradpilotError(f"{path} holds a {type(saved).__name__}, not a checkpoint: give {KINDS}")
    key = next((k for k in ("model", "state_dict", "model_state_dict") if isinstance(saved.get(k), dict)), None)
    weights = _weights(saved[key] if key else saved, path)
    optimizer = _optimizer_in(saved) if key else None
    if optimizer is not None:
        return _Read(weights, optimizer, _group_lr(optimizer), _beside(path))
    lr = _plan_lr(path.parent / "plan.yaml") if path.name == "model.pt" else None
    notes = (f"{path.name} of a tune: probed at the plan's learning rate ({lr:.3g})",) if lr else ()
    return _Read(weights, None, lr, _beside(path), notes)


def _optimizer_in(saved: dict[str, Any]) -> dict[str, Any] | None:
    """An optimizer's state_dict under ``optimizer`` (or ``optimizer_state_dict``), where there is one."""
    raw = saved.get("optimizer", saved.get("optimizer_state_dict"))
    return raw if isinstance(raw, dict) and "state" in raw and "param_groups" in raw else None


def _weights(saved: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    weights = {k: v for k, v in saved.items() if isinstance(v, torch.Tensor)}
    if not weights:
        raise GradpilotError(f"{path} holds no weights (no tensors under model, state_dict or at its top): give "
                             f"{KINDS}")
    return weights


def _beside(path: Path) -> Path | None:
    """The run's log beside a weights file: a tune's final run, else a metrics.csv in the same folder."""
    for log in (path.parent / "runs" / "final" / "metrics.csv", path.parent / "metrics.csv"):
        if log.is_file():
            return log
    return None


def _hugging_face(folder: Path) -> _Read:
    weights = _hf_weights(folder)
    optimizer = _safe_load(folder / "optimizer.pt") if (folder / "optimizer.pt").exists() else None
    try:
        history = json.loads((folder / "trainer_state.json").read_text()).get("log_history", [])
    except (OSError, ValueError, AttributeError) as exc:
        raise GradpilotError(f"{folder}/trainer_state.json cannot be read ({describe(exc, 120)})") from None
    logged = [r["learning_rate"] for r in history if isinstance(r, dict) and "learning_rate" in r]
    lr = float(logged[-1]) if logged else _group_lr(optimizer)
    return _Read(weights, optimizer if isinstance(optimizer, dict) else None, lr, folder / "trainer_state.json")


def _hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").exists():
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(folder / "model.safetensors")))
        except Exception as exc:
            raise GradpilotError(f"{folder}/model.safetensors cannot be read ({describe(exc, 120)})") from None
    if (folder / "pytorch_model.bin").exists():
        return dict(_safe_load(folder / "pytorch_model.bin"))
    raise GradpilotError(f"{folder} holds no model.safetensors or pytorch_model.bin (a checkpoint saved with "
                         "save_only_model? the weights are needed)")


def _lightning(path: Path) -> _Read:
    state = _safe_load(path)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise GradpilotError(f"{path} is not a Lightning checkpoint (no state_dict)")
    optimizers = state.get("optimizer_states") or []
    optimizer = optimizers[0] if optimizers and isinstance(optimizers[0], dict) else None
    # lightning_logs/version_N/{checkpoints/x.ckpt, metrics.csv}
    return _Read(dict(state["state_dict"]), optimizer, _group_lr(optimizer), path.parent.parent / "metrics.csv")


def _safe_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise GradpilotError(f"{path} cannot be read safely ({describe(exc, 120)}): gradpilot loads tensors and "
                             "plain values only") from None


def _group_lr(optimizer: Any) -> float | None:
    try:
        return float(optimizer["param_groups"][0]["lr"])
    except (TypeError, KeyError, IndexError, ValueError):
        return None


def fitted(weights: dict[str, torch.Tensor], model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """``weights`` keyed as ``model`` names its state: a prefix the saving library added (a LightningModule's
    attribute, ``model.``) is taken off; what training does not change (the frozen parameters an adapter's
    checkpoint leaves out) may be missing. Refused in one line when the keys or shapes do not fit."""
    wanted = model.state_dict()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    prefix = _prefix(weights, {k: v for k, v in wanted.items() if k not in frozen})
    keyed = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    mismatch = _mismatch(keyed, wanted, frozen)
    if mismatch:
        raise GradpilotError(f"{path} does not match the task's model: {mismatch}; give the task file the run was "
                             "trained with")
    return {k: keyed[k] for k in wanted if k in keyed}


def _mismatch(keyed: dict[str, torch.Tensor], wanted: dict[str, torch.Tensor], frozen: set[str]) -> str:
    """What keeps a checkpoint's tensors off the model, in words ("" where they fit)."""
    missing = [k for k in wanted if k not in keyed and k not in frozen]
    if missing:
        return f"{len(missing)} of its tensors are missing (e.g. {missing[0]!r})"
    shapes = [k for k in wanted if k in keyed and tuple(keyed[k].shape) != tuple(wanted[k].shape)]
    if shapes:
        return f"{shapes[0]!r} has shape {tuple(keyed[shapes[0]].shape)}, not {tuple(wanted[shapes[0]].shape)}"
    return ""


def _prefix(weights: dict[str, torch.Tensor], wanted: dict[str, torch.Tensor]) -> str:
    """The prefix most of the checkpoint's keys carry before the model's own names ("" for none)."""
    if set(wanted) <= set(weights):
        return ""
    found: Counter[str] = Counter()
    for key in weights:
        names = [name for name in wanted if key.endswith("." + name)]
        if names:
            found[key[: -len(max(names, key=len))]] += 1
    return found.most_common(1)[0][0] if found else ""
