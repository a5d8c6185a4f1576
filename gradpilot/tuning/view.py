"""How ``gradpilot tune`` shows its work: a progress bar over the budget, and the summary that ends in the paths."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from gradpilot.tuning.driver import TuneResult


@contextmanager
def budget_bar(console: Console, budget: float | None, *,
               disable: bool = False) -> Iterator[Callable[[str, float], None]]:
    """A bar filling as the budget (runs; None for a time budget, whose runs are known once measured) is spent;
    yields the ``progress(message, spent_runs)`` callback for tune. Off a terminal (a CI log, ``nohup``, a pipe)
    a bar would show nothing until the end: there each new step of the work is one line instead, with the
    budget spent and the time so far."""
    if not disable and not console.is_terminal:
        yield _log_lines(console, budget)
        return
    runs = "{task.completed:.2f}/{task.total:g} runs" if budget is not None else "{task.completed:.2f} runs"
    with Progress(TextColumn("[bold]tune"), BarColumn(), TextColumn(runs), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=console, transient=True, disable=disable) as bar:
        job = bar.add_task("", total=budget)

        def update(message: str, spent: float) -> None:
            bar.update(job, completed=min(spent, budget) if budget is not None else spent, description=message)

        yield update


def _log_lines(console: Console, budget: float | None) -> Callable[[str, float], None]:
    start, last = time.monotonic(), [""]
    of = f"/{budget:g}" if budget is not None else ""

    def line(message: str, spent: float) -> None:
        if message != last[0]:
            last[0] = message
            shown = min(spent, budget) if budget is not None else spent
            console.print(f"tune {shown:.2f}{of} runs, {time.monotonic() - start:.0f} s: {message}",
                          highlight=False, soft_wrap=True, markup=False)

    return line


def _paid(result: TuneResult) -> str:
    """The wall time paid: the whole command's where known (start-up included), else the tune call's."""
    whole = result.process_seconds if math.isfinite(result.process_seconds) else result.wall_seconds
    if not math.isfinite(whole):
        return f"{result.seconds:.0f} s of work"
    runs = f" = {whole / result.run_seconds:.2f} runs" if result.run_seconds > 0 else ""
    what = "the command" if math.isfinite(result.process_seconds) else "tune"
    return f"{what} took {whole:.1f} s{runs} of wall time"


def summary(result: TuneResult, console: Console) -> None:
    """Each stage's decision and cost (in runs of wall time, and its seconds split by kind), the plan, the model's
    validation metric, and where the files are."""
    stages = Table(title=f"tune: {result.spent:.2f} of {result.budget:.3g} runs spent ({result.spent_items:.2f} runs "
                         f"of items; one run ≈ {result.run_seconds:.3g} s; {_paid(result)})")
    for col in ("stage", "decision", "runs", "seconds", "train/val/io/other"):
        stages.add_column(col, justify="left" if col in ("stage", "decision") else "right", overflow="fold")
    for s in result.stages:
        why = s.why if not s.skipped or s.skipped == "budget" else f"skipped ({s.why})"
        split = " / ".join(f"{v:.1f}" for v in (s.spent.training, s.spent.validation, s.spent.io, s.spent.other))
        stages.add_row(s.name, why, f"{s.seconds / max(result.run_seconds, 1e-9):.2f}", f"{s.seconds:.1f}", split)
    console.print(stages)
    plan = Table(title="plan (transformers TrainingArguments)")
    plan.add_column("argument")
    plan.add_column("value", justify="right")
    for key, value in result.plan.items():
        plan.add_row(key, f"{value:.3g}" if isinstance(value, float) else str(value))
    console.print(plan)
    way = "higher" if result.higher_is_better else "lower"
    console.print(f"{result.metric_label} of the trained model on the validation set: {result.metric:.4g} ({way} is "
                  "better; the same set chose the LR and the epochs, so a held-out test set will read a little worse)",
                  highlight=False)
    console.print(f"plan:   {result.plan_path}\nmodel:  {result.model_path}\nrecord: {result.record_path}"
                  + (f"\nreport: {result.report_path}" if result.report_path.exists() else ""),
                  soft_wrap=True, highlight=False)
