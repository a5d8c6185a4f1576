"""Work shared by several ``tune`` processes through one Optuna storage, with Optuna's own means only.

A piece of work — a stage that must run once, a short run to a rung — is a trial waiting in a *queue*: an
Optuna study whose trials are enqueued with the job's parameters (as the trial's user attributes). A worker
takes one with ``study.ask()``, which hands each waiting trial to exactly one caller (the storage's own atomic
WAITING → RUNNING), and tells it COMPLETE with its result. Filling a queue happens once: the worker whose
``create_study`` succeeds fills it (a study name is unique in every storage); the others wait until it says it
is full. On a storage with a heartbeat (SQLite, PostgreSQL and every RDB URL), a worker beats while it works;
a worker that dies stops beating, its job is failed as stale and Optuna's retry callback puts a copy back.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryFailedTrialCallback
from optuna.trial import TrialState

from gradpilot.errors import GradpilotError, first_line
from gradpilot.tuning import _optuna

HEARTBEAT_S = 5  # a working worker writes a heartbeat this often
GRACE_S = 30  # a job whose worker has not beaten for this long is failed and put back
POLL_S = 0.2
_JOB = "job"  # the user attribute a queued trial carries its parameters in (JSON)


def open_storage(url: str | BaseStorage | None, journal: Path) -> BaseStorage:
    """The storage the trials live in: a given one (an RDB URL gets a heartbeat, so a dead worker's job goes back
    to the queue); else Optuna's journal file at ``journal``, which this machine's worker processes share and
    which opens in milliseconds where a new SQLite file takes a second."""
    if isinstance(url, BaseStorage):
        return url
    if url is None:
        return _journal(journal)
    for attempt in range(4):
        try:
            return _rdb(url)
        except (ImportError, ModuleNotFoundError) as exc:
            raise GradpilotError(f"storage {url.split(':')[0]} needs a driver that is not installed ({exc}): "
                                 "pip install 'gradpilot[postgres]' for PostgreSQL") from None
        except Exception as exc:  # SQLAlchemy's errors: a bad URL, a server that does not answer, a race
            if attempt < 3 and type(exc).__name__ in ("IntegrityError", "ProgrammingError", "OperationalError"):
                time.sleep(0.5 * (attempt + 1))  # workers starting together race to make Optuna's tables
                continue
            raise GradpilotError(f"cannot open storage {url!r}: {first_line(exc)}") from None
    raise AssertionError("unreachable")


def _journal(path: Path) -> BaseStorage:
    """The journal file, a line a process killed mid-write left half-written cut off first (Optuna skips such
    a last line, but a line appended after it would be joined to it and fail)."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    return JournalStorage(JournalFileBackend(str(path)))


def describe(storage: BaseStorage) -> str:
    """Which storage a tune keeps its trials in, as its record says it: the folder's own journal by name (so a
    moved folder is the same tune), a database by its URL without the password."""
    if isinstance(storage, optuna.storages.JournalStorage):
        return "the journal file in out_dir"
    url = _optuna.storage_url(storage)
    if url is None:
        return type(storage).__name__
    from sqlalchemy.engine import make_url

    return str(make_url(url).render_as_string(hide_password=True))


def has_queue(storage: BaseStorage, name: str) -> bool:
    """Whether the storage holds the study ``name`` (a queue some worker made)."""
    return any(s.study_name == name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))


def _rdb(url: str) -> RDBStorage:
    with quiet():
        return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                          engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
                          **_callback_arg())


class Queue:
    """Jobs in one Optuna study named ``name``; each job's parameters are a JSON-able dict."""

    def __init__(self, storage: BaseStorage, name: str) -> None:
        self.storage, self.name = storage, name
        self.study: optuna.Study | None = None

    def claim_filling(self) -> bool:
        """True for the one worker that must fill the queue: the one whose ``create_study`` made it."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            self.study = optuna.create_study(storage=self.storage, study_name=self.name)
            return True
        except optuna.exceptions.DuplicatedStudyError:
            self.study = optuna.load_study(storage=self.storage, study_name=self.name)
            return False

    def fill(self, jobs: list[dict[str, Any]], note: dict[str, Any] | None = None) -> None:
        """Enqueue the jobs (none twice), then say the queue is full, with ``note``: what the others must read."""
        study = self._study
        for i, params in enumerate(jobs):
            study.enqueue_trial({"n": i}, user_attrs={_JOB: json.dumps(params)}, skip_if_exists=True)
        study.set_user_attr("full", json.dumps(note or {}))

    def note(self, wait: Callable[[], None] | None = None) -> dict[str, Any]:
        """Wait until the queue is full; its note."""
        while "full" not in self._study.user_attrs:
            (wait or _sleep)()
        note: dict[str, Any] = json.loads(self._study.user_attrs["full"])
        return note

    def work(self, do: Callable[[dict[str, Any]], dict[str, Any]], wait: Callable[[], None] | None = None) -> None:
        """Take jobs and do them until every job is done (by this worker or another). ``wait`` is called while
        only other workers' jobs are left (the default sleeps a moment)."""
        self.note(wait)
        study = self._study
        while True:
            with quiet():
                optuna.storages.fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
            if not trials:
                return
            if not any(t.state == TrialState.WAITING for t in trials):
                (wait or _sleep)()
                continue
            with quiet():  # Optuna warns that heartbeats suit optimize(); a queue beats on its own
                trial = study.ask()
            if _JOB not in trial.user_attrs:  # another worker took the last one: ask() made a spare trial
                trial.set_user_attr("spare", True)
                study.tell(trial, state=TrialState.FAIL)
                continue
            trial.set_user_attr("worker", worker_id())
            with _optuna.beating(study, trial):
                result = do(json.loads(trial.user_attrs[_JOB]))
            trial.set_user_attr("result", json.dumps(result))
            study.tell(trial, 0.0)

    def results(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(parameters, result) of every job done, in the order enqueued."""
        done = [t for t in self._study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if "result" in t.user_attrs]
        return [(json.loads(t.user_attrs[_JOB]), json.loads(t.user_attrs["result"])) for t in done]

    def retry(self, worker: str | None = None) -> None:
        """Put back the jobs left running by ``worker`` (by any worker when None): they died with it."""
        study = self._study
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if worker is not None and trial.user_attrs.get("worker") != worker:
                continue
            with quiet():
                failed = study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
                if failed.state == TrialState.FAIL:
                    _retry(None)(study, failed)

    @property
    def _study(self) -> optuna.Study:
        if self.study is None:
            self.claim_filling()
        assert self.study is not None
        return self.study


def worker_id(pid: int | None = None) -> str:
    """A worker process (this one by default), as the jobs it takes record it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def once(storage: BaseStorage, name: str, do: Callable[[], dict[str, Any]],
         wait: Callable[[], None] | None = None) -> dict[str, Any]:
    """``do()`` run by exactly one worker; every worker gets its result (a JSON-able dict)."""
    queue = Queue(storage, name)
    if queue.claim_filling():
        queue.fill([{"job": 0}])
    queue.work(lambda _: do(), wait)
    return queue.results()[0][1]


def queues(storage: BaseStorage, prefix: str, keep: tuple[str, ...]) -> list[Queue]:
    """Every queue under ``prefix`` (the studies named ``prefix:...`` but those in ``keep``)."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    out = []
    for name in names:
        if name.startswith(f"{prefix}:") and name not in keep:
            queue = Queue(storage, name)
            queue.study = optuna.load_study(storage=storage, study_name=name)
            out.append(queue)
    return out


def sweep(storage: BaseStorage, prefix: str, keep: tuple[str, ...]) -> None:
    """Before any worker starts on a storage only this command uses: put back the jobs a killed run left
    running, and drop a queue it made but never filled (it is made again)."""
    for queue in queues(storage, prefix, keep):
        assert queue.study is not None
        if "full" in queue.study.user_attrs:
            queue.retry()
        else:
            optuna.delete_study(study_name=queue.name, storage=storage)


def retry_worker(storage: BaseStorage, prefix: str, keep: tuple[str, ...], worker: str) -> None:
    """Put back every job a dead worker process held."""
    for queue in queues(storage, prefix, keep):
        queue.retry(worker)


# Optuna 4.9 renamed the callback that puts a stale trial back; take the new name where it exists.
_NEW_RETRY = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
_CALLBACK_ARG = "heartbeat_stale_trial_callback" if _NEW_RETRY is not None else "failed_trial_callback"


def _callback_arg() -> dict[str, Any]:
    return {_CALLBACK_ARG: _retry(3)}


def _retry(max_retry: int | None) -> Callable[[optuna.Study, Any], None]:
    with quiet():
        made: Callable[[optuna.Study, Any], None] = (_NEW_RETRY or RetryFailedTrialCallback)(max_retry=max_retry)
    return made


@contextmanager
def quiet() -> Iterator[None]:
    """Optuna's notes on its heartbeat API (experimental, renamed, meant for optimize()) are not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        yield


def _sleep() -> None:
    time.sleep(POLL_S)
