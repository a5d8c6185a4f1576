"""Checkpoints that are safe to read and to write.

Read with ``torch.load(weights_only=True)``: a checkpoint holds tensors and plain values only, so a file
someone else put in the folder cannot run code when it is loaded. Written owner-only through a temporary
file with an unpredictable name (created exclusively, so never through a planted symlink), fsynced and
renamed over the last one: a crash mid-write leaves the previous checkpoint, and the next run removes the
temporary file a kill left behind.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradpilot._files import remove_temporaries, write_atomic
from gradpilot.errors import GradpilotError, describe

NAME = "last.pt"
FORMAT = 3  # bumped whenever what a key of LAYOUT holds changes
# Every key of gradpilot's one checkpoint format: a run of its engine saved (``run.LocalRun.save``), by ``fit``
# or by tune; ``extra`` holds what the driver keeps beside the run (``fit``: its validations, best weights, stop
# reason and settings). ``save`` refuses another set of keys and ``load`` a file whose keys differ, so a change to
# what a run saves fails its first test until it is written here too, and a checkpoint of an old layout is
# refused in one line, never half read.
LAYOUT = frozenset({"record", "model", "optimizer", "scheduler", "rng", "data", "extra"})
_AFRESH = "move it away to start the run afresh"


def save(state: dict[str, Any], directory: Path) -> Path:
    """Write ``state`` to ``directory/last.pt`` atomically, readable by its owner only."""
    if set(state) != LAYOUT:
        raise AssertionError(f"a checkpoint's keys changed ({sorted(set(state) ^ LAYOUT)}): update "
                             "checkpoint.LAYOUT and bump FORMAT")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return save_file(directory / NAME, {"format": FORMAT, **state})


def save_file(path: Path, state: Any) -> Path:
    """Tensors and plain values (weights, an optimizer's state) in ``path``: atomic, owner-only."""
    return write_atomic(path, lambda f: torch.save(state, f), private=True)


def load_file(path: Path, remedy: str = _AFRESH) -> Any:
    """What ``save_file`` wrote, on the CPU; runs no code from the file. A damaged or foreign file is one line
    naming it."""
    if path.is_symlink() or not path.is_file():
        raise GradpilotError(f"{path} is not a regular file: {remedy}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise GradpilotError(f"{path} cannot be read safely ({describe(exc)}): {remedy}") from None


def remove_stale_temporaries(directory: Path) -> None:
    """Delete the temporary files a run killed mid-write left behind (links are removed, never followed)."""
    remove_temporaries(directory, NAME)


def load(directory: Path) -> dict[str, Any] | None:
    """The last checkpoint in ``directory``, or None when there is none yet. Runs no code from the file."""
    path = directory / NAME
    if not path.exists() and not path.is_symlink():
        return None
    state = load_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT or set(state) - {"format"} != LAYOUT:
        raise GradpilotError(f"checkpoint {path} was not written by this version of gradpilot: {_AFRESH}")
    return state


def rng_state(loader: Any = None) -> dict[str, Any]:
    """Every RNG a training step or a shuffling loader may draw from, as tensors and plain values."""
    bit_gen = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.random.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(bit_gen["state"]["key"].astype(np.int64)),
                  "pos": int(bit_gen["state"]["pos"]), "has_gauss": int(bit_gen["has_gauss"]),
                  "gauss": float(bit_gen["gauss"])},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    for name, gen in _loader_generators(loader):
        state[name] = gen.get_state()
    return state


def set_rng_state(state: dict[str, Any], loader: Any = None) -> None:
    """Put back what ``rng_state`` took."""
    torch.random.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    saved = state["numpy"]
    np.random.set_state(("MT19937", saved["key"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"],
                         saved["gauss"]))
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in _loader_generators(loader):
        if name in state:
            gen.set_state(state[name])


def _loader_generators(loader: Any) -> list[tuple[str, torch.Generator]]:
    found: list[tuple[str, torch.Generator]] = []
    for name, owner in (("loader", loader), ("sampler", getattr(loader, "sampler", None)),
                        ("batch_sampler", getattr(getattr(loader, "batch_sampler", None), "sampler", None))):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for _, g in found):
            found.append((name, gen))
    return found
