"""What the batch-size search and the noise-scale estimate find: plain frozen records (no torch), read by tune's
record and its report as they are."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchTrial:
    """One size tried: whether it fit, its throughput and the peak memory it added."""

    batch_size: int
    fits: bool
    samples_per_second: float | None
    peak_memory: int | None
    error: str | None = None


@dataclass(frozen=True)
class BatchSizeResult:
    """The largest micro-batch that fits, with every trial in the order tried."""

    batch_size: int
    trials: tuple[BatchTrial, ...]
    limit: str = ""  # what bounded the search besides memory (the dataset's size, max_batch_size, a default budget)

    @property
    def fastest(self) -> BatchTrial | None:
        """The fitting trial with the highest samples per second."""
        ok = [t for t in self.trials if t.fits and t.samples_per_second]
        return max(ok, key=lambda t: t.samples_per_second or 0.0) if ok else None


@dataclass(frozen=True)
class NoiseScaleResult:
    """The gradient noise scale measured on a model, and the effective batch it recommends."""

    b_simple: float
    grad_sq: float
    trace_cov: float
    small_batch: int
    big_batch: int
    batches: int

    @property
    def recommended_batch_size(self) -> int:
        """The critical batch: beyond about B_simple, doubling the batch no longer halves the steps."""
        return max(1, round(self.b_simple))
