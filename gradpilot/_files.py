"""Files gradpilot writes: each one whole or not at all, and JSON that is always valid JSON.

One writer for every output (checkpoints, ``tune.json``, ``plan.yaml``, ``report.html``, diagnoses): the
bytes go to a temporary file beside the target with an unpredictable name (created exclusively, so never
through a planted symlink), are fsynced, then renamed over the target, and the folder is fsynced so that the
rename itself survives a crash. A kill mid-write leaves the previous file; ``remove_temporaries`` clears what
it left behind. Torch-free: ``gradpilot diagnose`` writes through it too.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from gradpilot.errors import GradpilotError

TMP_SUFFIX = ".tmp"
Writer = Callable[[IO[bytes]], None]


def write_atomic(path: Path, data: bytes | str | Writer, *, private: bool = False) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a function that writes to the open file) to ``path`` atomically;
    ``private`` leaves it readable by its owner only (mode 0600), else 0644."""
    if path.is_dir():
        raise GradpilotError(f"{path} is a folder, where gradpilot writes a file: move it away or choose another path")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)  # 0600, O_EXCL
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if not private:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def remove_temporaries(directory: Path, name: str) -> None:
    """Delete the temporary files a kill mid-write of ``directory/name`` left behind (links removed, not followed)."""
    if directory.is_dir():
        for leftover in directory.glob(f".{name}.*{TMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)


def _fsync_folder(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # a file system that cannot sync a folder: the rename is still atomic
        pass


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (and NumPy numbers made plain), so that it prints
    as valid JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def dumps(value: Any, *, indent: int | None = None) -> str:
    """``value`` as strict JSON (NaN and infinities as null)."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False)


def write_json(path: Path, value: Any) -> Path:
    """``value`` as strict JSON in ``path``, written atomically."""
    return write_atomic(path, dumps(value, indent=1))
