"""Following a run's log from outside the training process, as it grows: re-read when it changes, diagnose, and
say each finding the first time it appears (and again should a hint of it turn sure); stop the job — a signal to
its process, or a file the HF and Lightning callbacks poll — at the first finding ``FailOn`` counts; end when
the log has not grown for a while. NumPy only: no torch.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gradpilot.diagnosis.detectors import diagnose
from gradpilot.diagnosis.findings import QUIET, Diagnosis, FailOn, Finding
from gradpilot.diagnosis.history import History
from gradpilot.diagnosis.logs import read_log
from gradpilot.errors import GradpilotError

LOG_FILES = ("*.csv", "*.jsonl", "*.json", "events.out.tfevents*")


@dataclass(frozen=True)
class Seen:
    """What a poll found: the run as read, its diagnosis, the findings new since the last poll (or whose hint
    turned sure), and whether any of them fails."""

    history: History
    diagnosis: Diagnosis
    new: tuple[Finding, ...]
    failing: bool


class Watcher:
    """A log (a file, or a run folder: its newest run) read again each time it has changed."""

    def __init__(self, path: Path, *, fail_on: FailOn = FailOn(), higher_is_better: bool | None = None) -> None:
        self.path, self.fail_on, self.higher_is_better = path, fail_on, higher_is_better
        self.said: dict[str, bool] = {}  # kind -> said as sure
        self.signature: tuple[int, int] | None = None
        self.error = ""  # why the log could not be read at the last poll ("" when it was)

    def changed(self) -> bool:
        """Whether the log has grown (or changed) since the last poll."""
        now = _signature(self.path)
        moved = now is not None and now != self.signature
        if now is not None:
            self.signature = now
        return moved

    def poll(self) -> Seen | None:
        """Read and diagnose the log where it changed; None where it did not, or cannot be read yet (a line half
        written, a file not there yet: the next poll tries again, ``error`` says why)."""
        if not self.changed():
            return None
        try:
            history = read_log(self.path)
        except GradpilotError as exc:
            self.error = str(exc)
            return None
        self.error = ""
        if self.higher_is_better is not None:
            history = history.directed(self.higher_is_better)
        found = diagnose(history)
        new = tuple(f for f in found.findings if f.kind not in QUIET and self.said.get(f.kind) not in (True, f.sure))
        self.said.update({f.kind: f.sure or self.said.get(f.kind, False) for f in new})
        return Seen(history, found, new, any(self.fail_on(f) for f in new))


def follow(watcher: Watcher, *, tell: Callable[[Seen], None], interval: float = 1.0, idle: float | None = None,
           stop: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> int:
    """Poll every ``interval`` seconds, ``tell`` each poll that found something new; at the first failing
    finding ``stop`` the job and return 1. After ``idle`` seconds without the log growing, return 0 — or 2 where
    it never could be read."""
    last, read_once = clock(), False
    while True:
        seen = watcher.poll()
        if seen is not None:
            last, read_once = clock(), True
            if seen.new:
                tell(seen)
            if seen.failing:
                if stop is not None:
                    stop()
                return 1
        elif watcher.signature is not None and watcher.error == "":
            read_once = True
        if idle is not None and clock() - last >= idle:
            return 0 if read_once else 2
        sleep(interval)


def stopper(pid: int | None, sig: str, stop_file: Path | None) -> Callable[[], None] | None:
    """How to stop the job: ``sig`` to process ``pid``, and/or ``stop_file`` created (the callbacks'
    ``stop_file=`` polls it); None when neither is given."""
    if pid is None and stop_file is None:
        return None
    import signal  # only where a job is to be stopped

    number = getattr(signal, f"SIG{sig.upper().removeprefix('SIG')}", None)
    if pid is not None and not isinstance(number, signal.Signals):
        raise GradpilotError(f"--signal must name a signal (TERM, INT, KILL, USR1), got {sig!r}")

    def stop() -> None:
        if stop_file is not None:
            stop_file.parent.mkdir(parents=True, exist_ok=True)
            stop_file.write_text(f"stopped by gradpilot watch at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        if pid is not None and number is not None:
            with contextlib.suppress(ProcessLookupError):  # the job ended on its own meanwhile
                os.kill(pid, number)

    return stop


def _signature(path: Path) -> tuple[int, int] | None:
    """The log's size and last change (a folder's: over the log files in it); None where there is none yet."""
    if path.is_file():
        stat = path.stat()
        return stat.st_mtime_ns, stat.st_size
    if not path.is_dir():
        return None
    stats = [p.stat() for pattern in LOG_FILES for p in path.rglob(pattern) if p.is_file()]
    if not stats:
        return None
    return max(s.st_mtime_ns for s in stats), sum(s.st_size for s in stats)
