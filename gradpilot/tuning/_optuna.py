"""Every use of Optuna beyond its public API, in one place (``tests/test_tuning_optuna.py`` pins it to the
versions ``SUPPORTED`` names).

- ``live``: a ``Trial`` for a trial some worker made earlier — Optuna hands out ``Trial`` objects only from
  ``ask()``, yet ``report()`` (intermediate values, what successive halving reads) exists only on them.
- ``beating``: the heartbeat of one trial, which Optuna keeps only inside ``optimize()``; a queue's worker
  runs jobs outside it.
- ``storage_url``: the database URL an RDB storage was opened on (Optuna wraps it in a cache).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
from optuna.storages import BaseStorage

SUPPORTED = ((4, 0), (6, 0))  # [from, to): the Optuna versions these helpers are tested on


def live(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> optuna.trial.Trial:
    """A ``Trial`` handle on ``trial`` (made by any worker), to ``report`` to or set attributes on."""
    return optuna.trial.Trial(study, trial._trial_id)


def frozen(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """Trial ``number`` as the storage holds it now (public API: a fresh read, not a cached copy)."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


@contextmanager
def beating(study: optuna.Study, trial: optuna.trial.Trial) -> Iterator[None]:
    """Beat for ``trial`` while the block runs, on storages that watch beats (an RDB storage; a study wraps
    it in a cache, hence asked by what it can do, not by its class)."""
    storage = study._storage
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if interval is None:
        yield
        return
    record = storage.record_heartbeat  # type: ignore[attr-defined]
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            try:
                record(trial._trial_id)
            except Exception:  # a busy database: a beat missed is tried again soon, the thread must not die
                stop.wait(0.5)
                continue
            stop.wait(interval)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def storage_url(storage: BaseStorage) -> str | None:
    """The URL of an RDB storage (None for another kind)."""
    inner = getattr(storage, "_backend", storage)
    url = getattr(inner, "url", None)
    return None if url is None else str(url)
