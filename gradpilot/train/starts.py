"""Where a run stands, read from the checkpoints people have: gradpilot's ``last.pt`` (or its folder), a Hugging
Face Trainer ``checkpoint-N`` folder, a Lightning ``.ckpt``. Every file is read with
``torch.load(weights_only=True)`` (or safetensors): reading a checkpoint runs no code from it.
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
from gradpilot.train import checkpoint as _checkpoint


@dataclass(frozen=True)
class Start:
    """A run's state at its checkpoint: model weights keyed as the task's model names them, the optimizer's
    state where the checkpoint holds it, the LR it was training at, and what could not be taken."""

    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    lr: float | None
    notes: tuple[str, ...] = ()
    history: History | None = None  # the run's log up to the checkpoint, where it is kept beside it


def read_start(path: Path, model: nn.Module) -> Start:
    """The state saved at ``path``, fitted to ``model``; a checkpoint of another model is refused in one line."""
    if not path.exists():
        raise GradpilotError(f"{path} does not exist: give a gradpilot last.pt, a Hugging Face checkpoint-N "
                             "folder or a Lightning .ckpt")
    if path.is_dir() and (path / "trainer_state.json").exists():
        weights, optimizer, lr = _hugging_face(path)
        log = path / "trainer_state.json"
    elif path.is_dir() or path.name == _checkpoint.NAME:
        weights, optimizer, lr = _gradpilot(path if path.is_dir() else path.parent)
        log = (path if path.is_dir() else path.parent) / "metrics.csv"
    elif path.suffix == ".ckpt":
        weights, optimizer, lr = _lightning(path)
        log = path.parent.parent / "metrics.csv"  # lightning_logs/version_N/{checkpoints/x.ckpt, metrics.csv}
    else:
        raise GradpilotError(f"{path}: not a checkpoint gradpilot reads (a gradpilot last.pt, a Hugging Face "
                             "checkpoint-N folder or a Lightning .ckpt)")
    return Start(fitted(weights, model, path), optimizer, lr, history=_history(log))


def _history(log: Path) -> History | None:
    """The run's log beside its checkpoint, where there is one gradpilot reads (else None: the probe measures)."""
    if not log.is_file():
        return None
    try:
        return read_log(log)
    except GradpilotError:
        return None


def _gradpilot(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, float | None]:
    state = _checkpoint.load(folder)
    if state is None:
        raise GradpilotError(f"{folder} holds no {_checkpoint.NAME}")
    lrs = state.get("lrs") or []
    lr = float(lrs[-1]) if lrs else _group_lr(state.get("optimizer"))
    return state["model"], state.get("optimizer"), lr


def _hugging_face(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, float | None]:
    weights = _hf_weights(folder)
    optimizer = _safe_load(folder / "optimizer.pt") if (folder / "optimizer.pt").exists() else None
    try:
        history = json.loads((folder / "trainer_state.json").read_text()).get("log_history", [])
    except (OSError, ValueError, AttributeError) as exc:
        raise GradpilotError(f"{folder}/trainer_state.json cannot be read ({describe(exc, 120)})") from None
    logged = [r["learning_rate"] for r in history if isinstance(r, dict) and "learning_rate" in r]
    lr = float(logged[-1]) if logged else _group_lr(optimizer)
    return weights, optimizer if isinstance(optimizer, dict) else None, lr


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


def _lightning(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, float | None]:
    state = _safe_load(path)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise GradpilotError(f"{path} is not a Lightning checkpoint (no state_dict)")
    optimizers = state.get("optimizer_states") or []
    optimizer = optimizers[0] if optimizers and isinstance(optimizers[0], dict) else None
    return dict(state["state_dict"]), optimizer, _group_lr(optimizer)


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
    attribute, ``model.``) is taken off. Refused in one line when the keys or shapes do not fit."""
    wanted = model.state_dict()
    prefix = _prefix(weights, wanted)
    keyed = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    missing = [k for k in wanted if k not in keyed]
    shapes = [k for k in wanted if k in keyed and tuple(keyed[k].shape) != tuple(wanted[k].shape)]
    if missing or shapes:
        what = f"{len(missing)} of its tensors are missing (e.g. {missing[0]!r})" if missing else (
            f"{shapes[0]!r} has shape {tuple(keyed[shapes[0]].shape)}, not {tuple(wanted[shapes[0]].shape)}")
        raise GradpilotError(f"{path} does not match the task's model: {what}; give the task file the run was "
                             "trained with")
    return {k: keyed[k] for k in wanted}


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
