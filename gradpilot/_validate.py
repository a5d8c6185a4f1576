"""Argument checks every entry point shares: each bad value gets one line saying what was wrong.

Pure Python (no torch), so the pure-math modules can use it too.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any

from gradpilot.errors import GradpilotError


def positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int, refusing bools, fractions (2.5 or 2.0), NaN and anything below ``minimum``."""
    what = "a positive whole number" if minimum == 1 else f"a whole number of at least {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise GradpilotError(f"{name} must be {what}, got {name}={value!r}")
    return int(value)


def positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float above zero (or at least zero)."""
    what = "a finite number of at least 0" if allow_zero else "a positive finite number"
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value))
            or value < 0 or (value == 0 and not allow_zero)):
        raise GradpilotError(f"{name} must be {what}, got {name}={value!r}")
    return float(value)


def unit_interval(name: str, value: Any, *, closed: bool = False) -> float:
    """``value`` in (0, 1), or [0, 1] when ``closed``."""
    x = positive_float(name, value, allow_zero=closed)
    if x > 1 or (x == 1 and not closed):
        raise GradpilotError(f"{name} must be {'at most 1' if closed else 'below 1'}, got {name}={value!r}")
    return x


def choice(name: str, value: Any, choices: tuple[str, ...] | list[str]) -> str:
    """``value`` if it is one of ``choices``; otherwise an error listing them."""
    if value not in choices:
        raise GradpilotError(f"unknown {name} {value!r}; choose one of {list(choices)}")
    return str(value)


def writable_file(path: Path, what: str) -> Path:
    """Check, before any work, that ``path`` can be written: not a folder, in a folder we may write to."""
    if path.is_dir():
        raise GradpilotError(f"{what} {path} is a folder: give a file name")
    _check_folder(path.parent if str(path.parent) else Path("."), path, what)
    if path.exists():
        try:
            with open(path, "ab"):  # opened for appending and closed: the content stays as it is
                pass
        except OSError as exc:
            raise GradpilotError(f"{what} {path} cannot be written ({exc.strerror}); choose another path") from None
    return path


def writable_folder(path: Path, what: str) -> Path:
    """Check, before any work, that ``path`` is (or can become) a folder we may write into."""
    if path.exists() and not path.is_dir():
        raise GradpilotError(f"{what} {path} is a file, not a folder: give a folder path")
    _check_folder(path, path, what)
    return path


def _check_folder(folder: Path, path: Path, what: str) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:  # missing folders are made when writing
        existing = existing.parent
    if not existing.is_dir():
        raise GradpilotError(f"{what} {path} cannot be written: {existing} is a file, not a folder")
    try:  # a real write: permission bits alone say nothing to root or on a read-only mount
        fd, probe = tempfile.mkstemp(prefix=".gradpilot-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise GradpilotError(f"{what} {path} cannot be written: {existing} is not writable ({exc.strerror}); "
                             "choose another path") from None
