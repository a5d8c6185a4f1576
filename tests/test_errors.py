"""errors: one line for any exception, whatever its message."""

import pytest

from gradpilot.errors import GradpilotError, describe, first_line


@pytest.mark.parametrize(("exc", "line", "told"), [
    (MemoryError(), "MemoryError", "MemoryError"),  # Python's own, with no message
    (KeyboardInterrupt(), "KeyboardInterrupt", "KeyboardInterrupt"),
    (RuntimeError("\n\n  CUDA out of memory.  \nTried to allocate"), "CUDA out of memory.",
     "RuntimeError: CUDA out of memory."),
    (ValueError("   "), "ValueError", "ValueError"),
    (GradpilotError("bad input: do this"), "bad input: do this", "GradpilotError: bad input: do this"),
])
def test_the_first_line_of_any_exception(exc, line, told):
    assert first_line(exc) == line
    assert describe(exc) == told


def test_a_long_line_is_cut_at_the_limit():
    assert first_line(RuntimeError("x" * 500)) == "x" * 200
    assert first_line(RuntimeError("x" * 500), limit=10) == "x" * 10
    assert describe(OSError("y" * 50), limit=5) == "OSError: yyyyy"
