"""The largest micro-batch that fits, and the gradient noise scale that says which batch is worth it."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from gradpilot import _validate, scaling
from gradpilot.batch.results import BatchSizeResult, BatchTrial, NoiseScaleResult
from gradpilot.errors import GradpilotError, first_line
from gradpilot.train.accumulation import StepParts, optimizer_step
from gradpilot.train.batches import LossFn, StepFn, compute_loss, model_device, to_device
from gradpilot.train.state import preserved
from gradpilot.train.task import Task

log = logging.getLogger(__name__)

OOM_MESSAGES = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed",
                "can't allocate memory", "failed to allocate")


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error from any torch backend (CUDA, MPS, CPU)."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MESSAGES)


def free_memory(*, full: bool = True) -> None:
    """Give freed memory back: Python's garbage (the young generations only, where the last trial's tensors are,
    unless ``full``: a full collection takes a tenth of a second in a process holding torch), CUDA's cache, and
    glibc's heap."""
    if full:
        gc.collect()
    else:
        gc.collect(1)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    _malloc_trim()


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: fall back to the lifetime peak, which only ever grows
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def peak_memory_growth(device: torch.device) -> Iterator[list[int]]:
    """Measure the peak memory a block adds: CUDA's allocator peak, or sampled process RSS on CPU."""
    out = [0]
    free_memory(full=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield out
        finally:
            torch.cuda.synchronize(device)
            out[0] = torch.cuda.max_memory_allocated(device) - base
        return
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0005)

    sampler = threading.Thread(target=poll, daemon=True)
    sampler.start()
    try:
        yield out
    finally:
        stop.set()
        sampler.join()
        out[0] = max(peak[0], _rss()) - base


def _sample_batch(dataset: Dataset[Any], size: int, collate_fn: Callable[[list[Any]], Any]) -> Any:
    n = len(dataset)  # type: ignore[arg-type]
    return collate_fn([dataset[i % n] for i in range(size)])


def find_batch_size(
    model: nn.Module | Task,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: LossFn | None = None,
    dataset: Dataset[Any] | None = None,
    *,
    start: int = 1,
    max_batch_size: int | None = None,
    max_memory: int | None = None,
    steps_per_trial: int = 2,
    device: str | torch.device | None = None,
    step_fn: StepFn | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    progress: Callable[[BatchTrial], None] | None = None,
) -> BatchSizeResult:
    """The largest micro-batch that runs forward, backward and an optimizer step without running out of memory.

    Sizes double from ``start`` until one fails, then bisect. Out-of-memory errors are caught and memory freed;
    ``max_memory`` (bytes) also fails a size whose peak memory growth exceeds it — on CPU, where nothing
    raises, that budget is the only limit. The model and optimizer are restored afterwards.
    """
    if isinstance(model, Task):
        optimizer = optimizer if optimizer is not None else model.make_optimizer()
        step_fn = step_fn if step_fn is not None else model.step_fn
        model, loss_fn, dataset, collate_fn = _from_task(model, loss_fn, dataset, collate_fn)
    if optimizer is None or dataset is None:
        raise GradpilotError("find_batch_size needs an optimizer and a dataset, or a gradpilot.Task")
    _check_search(start, steps_per_trial, max_batch_size, max_memory)
    dev = torch.device(device) if device is not None else model_device(model)
    cap, cap_note = _size_cap(_dataset_length(dataset), max_batch_size)
    budget, budget_note = _budget(max_memory, dev)
    parts = StepParts(model, optimizer, loss_fn, step_fn, dev, _one_item)  # a trial steps on one batch
    runner = _Trials(parts, dataset, collate_fn or default_collate, steps_per_trial, budget, progress)
    first = min(start, cap)
    with preserved(model, optimizer):
        model.train()
        with preserved(model, optimizer):  # one step first: lazy imports and allocator set-up are not a batch's memory
            runner.run(first, steps=1, budget=None)
        best, _ = scaling.search_batch_size(runner.fits, start=first, max_size=cap)
    free_memory()
    if best == 0:
        raise GradpilotError(f"even a batch of {first} does not fit ({runner.trials[0].error}): use a smaller model, "
                             "mixed precision, or a larger max_memory")
    notes = (cap_note if best == cap else "", budget_note)
    return BatchSizeResult(best, tuple(runner.trials), "; ".join(n for n in notes if n))


def _check_search(start: int, steps_per_trial: int, max_batch_size: int | None, max_memory: int | None) -> None:
    _validate.positive_int("start", start)
    _validate.positive_int("steps_per_trial", steps_per_trial)
    if max_batch_size is not None:
        _validate.positive_int("max_batch_size", max_batch_size)
    if max_memory is not None:
        _validate.positive_int("max_memory (bytes)", max_memory)


def _budget(max_memory: int | None, device: torch.device) -> tuple[int | None, str]:
    """The memory budget: the one given, or on CPU (where nothing raises) half the memory available."""
    if max_memory is not None or device.type != "cpu":
        return max_memory, ""
    budget = _default_cpu_budget()
    return budget, f"no max_memory on CPU: a budget of half the available memory, {budget / 2**20:,.0f} MiB"


@dataclass
class _Trials:
    """Runs one size after another and keeps every trial, in the order tried."""

    parts: StepParts
    dataset: Dataset[Any]
    collate: Callable[[list[Any]], Any]
    steps: int
    budget: int | None
    progress: Callable[[BatchTrial], None] | None
    trials: list[BatchTrial] = field(default_factory=list)

    def run(self, size: int, *, steps: int, budget: int | None) -> BatchTrial:
        return _trial(self.parts, self.dataset, size, steps, self.collate, budget)

    def fits(self, size: int) -> bool:
        trial = self.run(size, steps=self.steps, budget=self.budget)
        self.trials.append(trial)
        log.info("batch %d: %s", size, "fits" if trial.fits else f"does not fit ({trial.error})")
        if self.progress is not None:
            self.progress(trial)
        return trial.fits


def _from_task(task: Task, loss_fn: LossFn | None, dataset: Dataset[Any] | None,
               collate_fn: Callable[[list[Any]], Any] | None) -> tuple[nn.Module, LossFn | None, Dataset[Any],
                                                                        Callable[[list[Any]], Any]]:
    """A task's model, loss, training items and collate_fn, for each argument left as None."""
    items, collate = task.dataset()
    return (task.model, loss_fn if loss_fn is not None else task.loss_fn, dataset if dataset is not None else items,
            collate_fn or collate)


def _dataset_length(dataset: Dataset[Any]) -> int:
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise GradpilotError("find_batch_size needs a map-style dataset with len(); "
                             f"got {type(dataset).__name__}") from None
    if n == 0:
        raise GradpilotError("the dataset is empty: find_batch_size needs items to build batches from")
    return int(n)


def _size_cap(n: int, max_batch_size: int | None) -> tuple[int, str]:
    """No batch larger than the dataset: beyond it a batch repeats items and says nothing about training."""
    if max_batch_size is not None and max_batch_size <= n:
        return max_batch_size, f"stopped at max_batch_size={max_batch_size}"
    return n, f"stopped at the dataset's size, {n} items (a larger batch would repeat items)"


def _default_cpu_budget() -> int:
    """Half the memory available now: on CPU nothing raises an out-of-memory error before the OS kills us."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 4 * 2**30


def _one_item(_batch: Any) -> int:
    return 1  # a trial steps on one batch: no micro-batches to weigh


def _trial(parts: StepParts, dataset: Dataset[Any], size: int, steps: int, collate_fn: Callable[[list[Any]], Any],
           max_memory: int | None) -> BatchTrial:
    elapsed, device, optimizer = 0.0, parts.device, parts.optimizer
    try:
        with peak_memory_growth(device) as grown:
            batch = to_device(_sample_batch(dataset, size, collate_fn), device)
            for i in range(steps + 1):  # the first step warms up (allocator, optimizer state) and is not timed
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                optimizer_step(parts, [batch])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i > 0:
                    elapsed += time.perf_counter() - t0
            del batch
            optimizer.zero_grad(set_to_none=True)
    except Exception as exc:
        if not is_oom(exc):
            raise
        optimizer.zero_grad(set_to_none=True)
        free_memory()
        return BatchTrial(size, False, None, None, first_line(exc))
    if max_memory is not None and grown[0] > max_memory:
        over = f"peak memory grew {grown[0] / 2**20:.0f} MiB, over the {max_memory / 2**20:.0f} MiB budget"
        return BatchTrial(size, False, None, grown[0], over)
    return BatchTrial(size, True, size * steps / elapsed if elapsed > 0 else math.inf, grown[0])


def estimate_noise_scale(
    model: nn.Module | Task,
    loss_fn: LossFn | None = None,
    dataset: Dataset[Any] | None = None,
    *,
    small_batch: int = 8,
    big_batch: int = 128,
    batches: int = 16,
    seed: int = 0,
    device: str | torch.device | None = None,
    step_fn: StepFn | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> NoiseScaleResult:
    """Estimate B_simple = tr(Σ)/|G|² from squared gradient norms at two batch sizes (McCandlish et al. 2018).

    Averages ``batches`` random batches of each size at the current parameters; nothing is stepped, and the
    model (gradients, BatchNorm statistics) and torch's RNG are put back as they were.
    """
    if isinstance(model, Task):
        step_fn = step_fn if step_fn is not None else model.step_fn
        model, loss_fn, dataset, collate_fn = _from_task(model, loss_fn, dataset, collate_fn)
    if dataset is None:
        raise GradpilotError("estimate_noise_scale needs a dataset, or a gradpilot.Task")
    collate = collate_fn or default_collate
    if len(dataset) < big_batch:  # type: ignore[arg-type]
        raise GradpilotError(f"the dataset has {len(dataset)} items, fewer than big_batch={big_batch}")  # type: ignore[arg-type]
    if batches < 1:
        raise GradpilotError(f"batches must be at least 1, got {batches=}")
    device = torch.device(device) if device is not None else model_device(model)
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]

    def mean_sq_norm(size: int) -> float:
        total = 0.0
        for _ in range(batches):
            idx = torch.randperm(len(dataset), generator=gen)[:size].tolist()  # type: ignore[arg-type]
            batch = to_device(collate([dataset[i] for i in idx]), device)
            grads = torch.autograd.grad(compute_loss(model, batch, loss_fn, step_fn), params, allow_unused=True)
            total += sum(float(g.pow(2).sum()) for g in grads if g is not None)
        return total / batches

    with preserved(model):  # BatchNorm statistics, gradients and RNG as they were
        small, big = mean_sq_norm(small_batch), mean_sq_norm(big_batch)
    est = scaling.noise_scale(small, big, small_batch, big_batch)
    return NoiseScaleResult(est.b_simple, est.grad_sq, est.trace_cov, small_batch, big_batch, batches)
