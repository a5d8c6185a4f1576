"""Checkpoints written atomically: a crash mid-write leaves the previous checkpoint, never half a file."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradpilot.errors import GradpilotError

NAME = "last.pt"


def save(state: dict[str, Any], directory: Path) -> Path:
    """Write ``state`` to ``directory/last.pt`` through a temporary file, fsync and atomic rename."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / NAME
    tmp = directory / f".{NAME}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass
    return path


def load(directory: Path) -> dict[str, Any] | None:
    """The last checkpoint in ``directory``, or None when there is none yet."""
    path = directory / NAME
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise GradpilotError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
                             "move it away to start the run afresh") from None


def rng_state(loader: Any = None) -> dict[str, Any]:
    """Every RNG a training step or a shuffling loader may draw from."""
    state: dict[str, Any] = {"torch": torch.random.get_rng_state(), "python": random.getstate(),
                             "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for name, gen in _loader_generators(loader):
        state[name] = gen.get_state()
    return state


def set_rng_state(state: dict[str, Any], loader: Any = None) -> None:
    """Put back what ``rng_state`` took."""
    torch.random.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in _loader_generators(loader):
        if name in state:
            gen.set_state(state[name])


def _loader_generators(loader: Any) -> list[tuple[str, torch.Generator]]:
    found = []
    for name, owner in (("loader", loader), ("sampler", getattr(loader, "sampler", None)),
                        ("batch_sampler", getattr(getattr(loader, "batch_sampler", None), "sampler", None))):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for _, g in found):
            found.append((name, gen))
    return found
