"""Readers for the logs runs leave behind: CSV (Lightning's CSVLogger too), JSON lines, TensorBoard event
files and Hugging Face Trainer's ``trainer_state.json``. Each returns a ``History``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from gradpilot.errors import GradpilotError
from gradpilot.history import History, from_records


def read_log(path: str | Path) -> History:
    """Read a run's log; ``path`` is a file or a run folder (Lightning ``version_N``, a TensorBoard log dir,
    a Trainer checkpoint folder)."""
    path = Path(path)
    if not path.exists():
        raise GradpilotError(f"{path} does not exist")
    if path.is_dir():
        path = _pick_file(path)
    if path.stat().st_size == 0:
        raise GradpilotError(f"{path} is empty")
    name = path.name
    if name.startswith("events.out.tfevents"):
        return read_tensorboard(path.parent)
    if name.endswith(".json") and name != "metrics.json":
        return read_trainer_state(path)
    if name.endswith((".jsonl", ".ndjson")):
        return read_jsonl(path)
    if name.endswith((".csv", ".tsv")):
        return read_csv(path)
    raise GradpilotError(f"{path}: unknown log format; gradpilot reads .csv, .jsonl, trainer_state.json and "
                         "TensorBoard event files")


def _pick_file(folder: Path) -> Path:
    for pattern in ("trainer_state.json", "metrics.csv", "events.out.tfevents*", "*.jsonl", "*.csv",
                    "*/trainer_state.json", "**/events.out.tfevents*", "**/metrics.csv"):
        found = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
    raise GradpilotError(f"{folder} holds no log gradpilot can read (trainer_state.json, metrics.csv, "
                         "TensorBoard events, .jsonl or .csv)")


def read_csv(path: Path) -> History:
    """A CSV with a header row; sparse rows (Lightning logs train and validation on separate rows) are fine."""
    with open(path, newline="") as f:
        lines = list(csv.reader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    if not lines or not any(cell.strip() for cell in lines[0]):
        raise GradpilotError(f"{path}:1: no header row")
    header = [h.strip() for h in lines[0]]
    records = []
    for lineno, row in enumerate(lines[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise GradpilotError(f"{path}:{lineno}: expected {len(header)} fields as in the header, found {len(row)}"
                                 " (a truncated or corrupt file?)")
        record: dict[str, Any] = {}
        for name, cell in zip(header, row):
            cell = cell.strip()
            if cell and cell.lower() not in ("nan", "inf", "-inf"):
                try:
                    float(cell)
                except ValueError:
                    if name.lower() not in ("timestamp", "time", "date", "datetime", "tag", "name"):
                        raise GradpilotError(f"{path}:{lineno}: {name!r} is {cell!r}, not a number") from None
            record[name] = cell
        records.append(record)
    if not records:
        raise GradpilotError(f"{path}: a header but no rows")
    return from_records(records, str(path))


def read_jsonl(path: Path) -> History:
    """One JSON object per line, e.g. ``{"step": 10, "loss": 0.9, "lr": 0.001}``."""
    records = []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise GradpilotError(f"{path}:{lineno}: not valid JSON ({exc.msg}); a truncated line?") from None
            if not isinstance(record, dict):
                raise GradpilotError(f"{path}:{lineno}: expected a JSON object, found {type(record).__name__}")
            records.append(record)
    return from_records(records, str(path))


def read_trainer_state(path: Path) -> History:
    """Hugging Face Trainer's ``trainer_state.json``: its ``log_history`` holds train and eval entries."""
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GradpilotError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); a truncated file?") from None
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise GradpilotError(f"{path}: no 'log_history' list; is this a Trainer's trainer_state.json?")
    # the last entry summarises the run ("train_loss" is an average over all of it): not a step
    records = [r for r in history if isinstance(r, dict) and "train_runtime" not in r]
    return from_records(records, str(path))


def read_tensorboard(folder: Path) -> History:
    """Scalars from TensorBoard event files in ``folder``, read with the tensorboard package's reader."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise GradpilotError("reading TensorBoard logs needs the tensorboard package: "
                             "pip install 'gradpilot[tensorboard]'") from None
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    try:
        acc.Reload()
    except Exception as exc:  # noqa: BLE001 - the reader raises many kinds on corrupt files
        raise GradpilotError(f"{folder}: the TensorBoard event file cannot be read ({exc})") from None
    tags = acc.Tags().get("scalars", [])
    if not tags:
        raise GradpilotError(f"{folder}: the TensorBoard events hold no scalars (empty or truncated file?)")
    rows: dict[int, dict[str, Any]] = {}
    for tag in tags:
        for event in acc.Scalars(tag):
            rows.setdefault(event.step, {"step": event.step})[tag] = event.value
    return from_records([rows[s] for s in sorted(rows)], str(folder))
