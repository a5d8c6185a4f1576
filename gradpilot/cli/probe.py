"""``gradpilot probe``: the measured LR verdict from a run's checkpoint (``gradpilot.probe``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from gradpilot.cli.common import TaskFile, _load, _one_line_errors, _print_json, app, console, err_console
from gradpilot.errors import GradpilotError

if TYPE_CHECKING:
    from gradpilot.probing.measure import ProbeResult


@app.command("probe")
@_one_line_errors
def probe_command(
    task_file: TaskFile = None,
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="the run's checkpoint: a gradpilot last.pt, a "
                                             "Hugging Face checkpoint-N folder or a Lightning .ckpt")] = Path(),
    share: Annotated[float, typer.Option(help="share of one run's items the branches may train, together")] = 0.1,
    lr: Annotated[float | None, typer.Option("--lr", help="the run's LR, where the checkpoint does not say")] = None,
    seed: Annotated[int, typer.Option(help="seed passed to task() and the branches' data order")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON instead of a table")] = False,
) -> None:
    """Measure whether a run's LR is too high, too low or about right: short branches from its checkpoint at
    its LR ×⅓, ×1 and ×3, scored on validation after a cooldown."""
    from gradpilot.probing.measure import probe

    if checkpoint == Path():
        raise GradpilotError("give the run's checkpoint with --checkpoint PATH (a gradpilot last.pt, a Hugging Face "
                             "checkpoint-N folder or a Lightning .ckpt)")
    task = _load(task_file, seed)
    said = None if as_json else lambda message: err_console.print(message, highlight=False, soft_wrap=True)
    result = probe(task, checkpoint, share=share, seed=seed, learning_rate=lr, progress=said)
    if as_json:
        _print_json(result.to_json())
    else:
        _print_result(result)


def _print_result(result: ProbeResult) -> None:
    table = Table(title="LR probe: branches from the checkpoint, each after a cooldown")
    for column in ("LR", "factor", "validation loss (decides)", result.metric):
        table.add_column(column, justify="right")
    for (factor, score), (_, loss) in zip(result.scores, result.losses, strict=True):
        table.add_row(f"{result.learning_rate * factor:.3g}", f"×{factor:.3g}", f"{loss:.5g}", f"{score:.5g}")
    console.print(f"validation loss at the checkpoint: {result.start_loss:.5g}")
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    moves = result.verdict in ("too high", "too low")
    said = "cannot be called (unsure): keep it" if result.verdict == "unsure" else f"is {result.verdict}"
    console.print(f"[bold]The learning rate {result.learning_rate:.3g} {said}[/]"
                  + (f": use {result.suggested_learning_rate:.3g}" if moves else "")
                  + f" — measured on {result.samples:,} items, {result.cost_runs:.1%} of one run, "
                  f"{result.seconds:.1f} s")
