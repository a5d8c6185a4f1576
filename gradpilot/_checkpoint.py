"""Checkpoints that are safe to read and to write.

Read with ``torch.load(weights_only=True)``: a checkpoint holds tensors and plain values only, so a file
someone else put in the folder cannot run code when it is loaded. Written owner-only through a temporary
file with an unpredictable name (created exclusively, so never through a planted symlink), fsynced and
renamed over the last one: a crash mid-write leaves the previous checkpoint, and the next run removes the
temporary file a kill left behind.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradpilot.errors import GradpilotError

NAME = "last.pt"
FORMAT = 2  # bumped whenever the checkpoint's layout changes
_TMP_PREFIX = f".{NAME}."
_TMP_SUFFIX = ".tmp"


def save(state: dict[str, Any], directory: Path) -> Path:
    """Write ``state`` to ``directory/last.pt`` atomically, readable by its owner only."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=directory)  # mode 0600, O_EXCL
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(directory)
    return directory / NAME


def _fsync_folder(directory: Path) -> None:
    try:  # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def remove_stale_temporaries(directory: Path) -> None:
    """Delete the temporary files a run killed mid-write left behind (links are removed, never followed)."""
    if directory.is_dir():
        for leftover in directory.glob(f"{_TMP_PREFIX}*{_TMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)


def load(directory: Path) -> dict[str, Any] | None:
    """The last checkpoint in ``directory``, or None when there is none yet. Runs no code from the file."""
    path = directory / NAME
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_file():
        raise GradpilotError(f"checkpoint {path} is not a regular file: move it away to start the run afresh")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise GradpilotError(f"checkpoint {path} cannot be read safely ({type(exc).__name__}: {first}); "
                             "move it away to start the run afresh") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise GradpilotError(f"checkpoint {path} was not written by this version of gradpilot's fit; "
                             "move it away to start the run afresh")
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
