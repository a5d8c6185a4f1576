"""The one exception type gradpilot raises for input a user can fix, and how any other exception is told in
one line."""

from __future__ import annotations


class GradpilotError(ValueError):
    """Bad input or an impossible request; the message says what was wrong and what to do."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-blank line of ``exc``'s message, at most ``limit`` characters; the exception's type name
    where the message is empty (Python raises ``MemoryError()`` and ``KeyboardInterrupt()`` with none)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__


def describe(exc: BaseException, limit: int = 200) -> str:
    """``"TypeName: first line"``, or the type name alone where the message is empty."""
    line = first_line(exc, limit)
    name = type(exc).__name__
    return name if line == name else f"{name}: {line}"
