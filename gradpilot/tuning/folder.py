"""A tune's folder: where each of its files lives. The layout is spelled here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TuneFolder:
    """The folder ``gradpilot tune --out`` writes: the outputs at its top, the work in ``runs/``."""

    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "plan.yaml"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def record(self) -> Path:
        return self.root / "tune.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def trials(self) -> Path:
        """Optuna's journal file: the storage a tune keeps its work in unless given another."""
        return self.root / "trials.journal"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def initial(self) -> Path:
        """The weights every run starts from."""
        return self.runs / "initial.pt"

    @property
    def clock(self) -> Path:
        return self.runs / "clock"

    @property
    def search(self) -> Path:
        return self.runs / "search"

    def trial(self, number: int) -> Path:
        """The saved run of the search's trial ``number`` (a folder)."""
        return self.search / f"trial-{number}"

    def scratch(self, number: int) -> Path:
        """Where a trainer keeps its own files while it trains trial ``number``."""
        return self.search / f"work-{number}"

    @property
    def trunk(self) -> Path:
        """The trunk's save, from before the branch it will go on from (a folder)."""
        return self.runs / "trunk"

    @property
    def trunk_note(self) -> Path:
        """The trunk's record: where it went on from, the branches done, the winning path."""
        return self.runs / "trunk.json"

    @property
    def trunk_scratch(self) -> Path:
        return self.runs / "trunk-work"

    @property
    def best(self) -> Path:
        """The best branch's weights so far: ``model.pt`` at the end."""
        return self.runs / "best.pt"

    @property
    def final(self) -> Path:
        """The final run's log (``metrics.csv``): the trunk up to the winning branch, then its decay."""
        return self.runs / "final"

    @property
    def outputs(self) -> tuple[Path, ...]:
        """The files tune writes (each must not be a folder)."""
        return self.record, self.plan, self.model, self.report, self.initial
