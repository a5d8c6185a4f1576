"""The one data order: which micro-batches each epoch of a run trains on, for ``fit``, tune and the probe alike.

A task's training set is shuffled per epoch by the run's seed (``epoch_order``: epoch ``e``'s permutation comes
from the seed and ``e`` alone), cut into micro-batches whose last may be partial — as the Hugging Face Trainer
cuts it, so an epoch is ``ceil(items / micro_batch)`` micro-batches and ``ceil`` of that over the accumulation
optimizer steps, the count a plan's schedule is written for. A resumed run starts mid-epoch without reading
what it passes over. A data loader the user gives ``fit`` keeps its own order (``FromLoader``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gradpilot.errors import GradpilotError
from gradpilot.train import checkpoint


def epoch_order(items: int, micro_batch: int, seed: int, epoch: int, world: int = 1, rank: int = 0) -> list[list[int]]:
    """Epoch ``epoch``'s micro-batches of item indexes: a permutation drawn from ``seed`` and ``epoch``, cut into
    ``micro_batch``-sized pieces, the last one partial. Under data parallel each of ``world`` processes takes
    every ``world``-th item from its ``rank`` on, the permutation padded from its start to a multiple of
    ``world`` (as ``DistributedSampler`` shares an epoch out)."""
    order = torch.randperm(items, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    if world > 1:
        order = (order + order[:(-items) % world])[rank::world]
    return [order[i:i + micro_batch] for i in range(0, len(order), micro_batch)]


def shard_items(items: int, world: int) -> int:
    """Items one of ``world`` processes trains per epoch."""
    return math.ceil(items / world)


class SeededBatches(Sampler[list[int]]):
    """A batch sampler giving ``epoch_order``: each pass over it is the next epoch (``Task.train_loader``)."""

    def __init__(self, items: int, micro_batch: int, seed: int, world: int = 1, rank: int = 0) -> None:
        self.items, self.micro_batch, self.seed, self.epoch = items, micro_batch, seed, 0
        self.world, self.rank = world, rank
        self.batch_size = micro_batch  # what a loader's batch size is read from

    def __iter__(self) -> Iterator[list[int]]:
        batches = epoch_order(self.items, self.micro_batch, self.seed, self.epoch, self.world, self.rank)
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        return math.ceil(shard_items(self.items, self.world) / self.micro_batch)


class Batches(Protocol):
    """Where a run's micro-batches come from, epoch by epoch."""

    per_epoch: int  # micro-batches in one epoch

    def epoch(self, index: int, skip: int) -> Iterator[Any]:
        """Epoch ``index``'s micro-batches from the ``skip``-th on."""
        ...

    def items(self, first: int, count: int) -> int:
        """The items in ``count`` micro-batches of an epoch from the ``first``-th on."""
        ...

    def state(self) -> dict[str, Any]:
        """What a checkpoint must keep to give the same batches again (the RNGs a user's loader draws from)."""
        ...

    def restore(self, state: dict[str, Any]) -> None: ...


class Shuffled:
    """A dataset in ``epoch_order``: nothing drawn from any global RNG, so the order is the seed's alone, and a
    resumed epoch reads none of the items it passes over."""

    def __init__(self, dataset: Dataset[Any], collate: Callable[[list[Any]], Any], micro_batch: int,
                 seed: int, world: int = 1, rank: int = 0) -> None:
        self.dataset, self.collate, self.micro_batch, self.seed = dataset, collate, micro_batch, seed
        self.world, self.rank = world, rank
        self.size = shard_items(_items(dataset), world)  # this process's items an epoch
        self.per_epoch = math.ceil(self.size / micro_batch)
        self._all = _items(dataset)

    def epoch(self, index: int, skip: int) -> Iterator[Any]:
        batches = epoch_order(self._all, self.micro_batch, self.seed, index, self.world, self.rank)[skip:]
        own = torch.Generator().manual_seed(self.seed)  # a loader's iterator draws a seed: not from the global RNG
        yield from DataLoader(self.dataset, batch_sampler=batches, collate_fn=self.collate, generator=own)

    def items(self, first: int, count: int) -> int:
        return sum(min(self.micro_batch, self.size - i * self.micro_batch) for i in range(first, first + count))

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        del state


class FromLoader:
    """A data loader in its own order (its sampler, its shuffling generator). Resuming mid-epoch replays the
    epoch's shuffle from the RNG state taken when the epoch began and reads past the batches already trained,
    then puts the RNGs back as they were when the run was saved."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.per_epoch = int(loader_length("train_loader", loader) or 0)
        self.began: dict[str, Any] = {}  # the RNGs as the current epoch began
        self._resumed: dict[str, Any] | None = None

    def epoch(self, index: int, skip: int) -> Iterator[Any]:
        del index  # the loader's own sampler moves on by itself
        if skip and self._resumed is not None:
            checkpoint.set_rng_state(self._resumed["began"], self.loader)
        else:
            self.began = checkpoint.rng_state(self.loader)
        batches = iter(self.loader)
        for _ in range(skip):
            next(batches, None)
        if skip and self._resumed is not None:
            self.began = self._resumed["began"]
            checkpoint.set_rng_state(self._resumed["now"], self.loader)
        self._resumed = None
        yield from batches

    def items(self, first: int, count: int) -> int:
        size = getattr(self.loader, "batch_size", None)
        try:
            total = len(self.loader.dataset)
        except (AttributeError, TypeError):
            return count * int(size or 1)
        return sum(min(int(size), total - i * int(size)) for i in range(first, first + count)) if size else \
            round(count * total / self.per_epoch)

    def state(self) -> dict[str, Any]:
        return {"began": self.began, "now": checkpoint.rng_state(self.loader)}

    def restore(self, state: dict[str, Any]) -> None:
        self._resumed = state
        checkpoint.set_rng_state(state["now"], self.loader)


def loader_length(name: str, loader: Any, required: bool = True) -> int | None:
    """Batches in one pass over ``loader``; a loader without a length, or an empty one, is refused in one line."""
    try:
        n = len(loader)
    except TypeError:
        if required:
            raise GradpilotError(f"{name} has no len(): gradpilot needs to know how many batches an epoch "
                                 "holds") from None
        return None
    if n == 0 and required:
        raise GradpilotError(f"{name} yields no batches: check the dataset is not empty "
                             "and that drop_last does not drop its only batch")
    return int(n)


def _items(dataset: Any) -> int:
    try:
        return len(dataset)
    except TypeError:
        raise GradpilotError("the training set has no length (an iterable dataset): give a map-style Dataset, "
                             "or a DataLoader") from None
