"""``tune(n_jobs=N)``: N - 1 worker processes on this machine beside this one, each a worker on the same
journal file.

They are forked, so they inherit the task as it is (no need to pickle it or load it again); each takes its
share of the threads and opens the storage afresh. The parent watches them while it waits on other workers'
jobs: a worker that died has its jobs put back in their queues, so the work goes on without it.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch

from gradpilot.errors import describe
from gradpilot.tuning import queue
from gradpilot.tuning.context import Context


class LocalWorkers:
    """The worker processes of one ``tune`` call (a context manager: they are joined on the way out)."""

    def __init__(self, ctx: Context, n_jobs: int, work: Callable[[Context], Any]) -> None:
        self.ctx, self.n_jobs, self.work = ctx, n_jobs, work
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.handled: set[int] = set()

    def __enter__(self) -> LocalWorkers:
        threads = max(1, torch.get_num_threads() // self.n_jobs)
        torch.set_num_threads(threads)
        fork = multiprocessing.get_context("fork")
        for _ in range(self.n_jobs - 1):
            process = fork.Process(target=_work_in_child, args=(self.ctx, self.work, threads), daemon=True)
            process.start()
            self.processes.append(process)
        return self

    def watch(self) -> None:
        """Called while the parent waits: put back the jobs of any worker that died, then wait a moment."""
        for process in self.processes:
            if process.exitcode not in (None, 0) and process.pid not in self.handled:
                self.handled.add(int(process.pid or 0))
                queue.retry_worker(self.ctx.storage, self.ctx.prefix, (f"{self.ctx.prefix}:lr_search",),
                                      queue.worker_id(process.pid))
        time.sleep(queue.POLL_S)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        for process in self.processes:
            if kind is not None:
                process.terminate()
            process.join()


def _work_in_child(ctx: Context, work: Callable[[Context], Any], threads: int) -> None:
    torch.set_num_threads(threads)
    storage = queue.open_storage(None, ctx.folder.trials)
    mine = dataclasses.replace(ctx, storage=storage, progress=None, wait=None)
    try:
        work(mine)
    except KeyboardInterrupt:
        os._exit(130)
    except Exception as exc:  # one line, not a forked process's traceback: the parent puts its jobs back
        print(f"error: tune worker {os.getpid()}: {describe(exc)}", file=sys.stderr, flush=True)
        os._exit(2)
