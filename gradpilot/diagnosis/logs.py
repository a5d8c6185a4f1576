"""Readers for the logs runs leave behind: CSV (Lightning's CSVLogger too), JSON lines, TensorBoard event
files and Hugging Face Trainer's ``trainer_state.json``. Each returns a ``History``.

Damaged files (bytes that are not UTF-8, a cut last line, a truncated event file, JSON nested too deep)
end in one ``GradpilotError`` naming the file and line, or are read as far as they are whole with a
warning in ``History.warnings``. Rows are streamed: memory grows with the columns diagnosis reads, not
with the file.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gradpilot.diagnosis._columns import Columns, classify, from_records
from gradpilot.diagnosis.history import History
from gradpilot.errors import GradpilotError

__all__ = ["classify", "find_runs", "hidden_nan", "read_csv", "read_jsonl", "read_log", "read_tensorboard",
           "read_trainer_state"]

# Where a run's log is, most telling first: a log the libraries write by name beats any CSV lying beside it
# (a data file next to lightning_logs/ is not a log).
_PATTERNS = (("trainer_state.json", 0), ("metrics.csv", 0), ("events.out.tfevents*", 0), ("*.jsonl", 0),
             ("training.log", 0), ("trainer_state.json", 1), ("metrics.csv", None), ("events.out.tfevents*", None),
             ("*.csv", 0))
_NUMBERED = re.compile(r"^(?:version|checkpoint)[-_](\d+)$")
_EVENT_TIME = re.compile(r"tfevents\.(\d+)")


def read_log(path: str | Path) -> History:
    """Read a run's log; ``path`` is a file or a folder (Lightning ``lightning_logs/`` or one ``version_N``, a
    TensorBoard log dir, a Trainer ``output_dir`` or one checkpoint). A folder holding several runs is read
    at its newest — the highest ``version_N`` or ``checkpoint-N``, the latest event file — never spliced,
    with a warning naming the others (``find_runs`` lists them all)."""
    path = Path(path)
    if not path.exists():
        raise GradpilotError(f"{path} does not exist")
    others: list[Path] = []
    pair = keras_pair(path) if path.is_dir() else None
    if pair is not None:
        return read_keras_tensorboard(path, pair)
    if path.is_dir():
        *others, path = find_runs(path)
    history = _read_file(path)
    if others:
        note = (f"{len(others) + 1} runs in this folder: read the newest, {path}; `gradpilot diagnose --all` "
                "diagnoses each")
        history = dataclasses.replace(history, warnings=(*history.warnings, note))
    return history


def find_runs(folder: str | Path) -> list[Path]:
    """The logs of every run in ``folder``, oldest first: one file per run (an event file stands for its
    own run only). The kind looked for is the first of ``_PATTERNS`` found there."""
    folder = Path(folder)
    files = list(_files_inside(folder))
    for pattern, depth in _PATTERNS:
        found = [p for p, d in files if (depth is None or d == depth) and p.match(pattern)]
        if found:
            return sorted(found, key=lambda p: _run_order(p, folder))
    raise GradpilotError(f"{folder} holds no log gradpilot can read (trainer_state.json, metrics.csv, "
                         "TensorBoard events, .jsonl or .csv)")


def _run_order(path: Path, folder: Path) -> tuple[tuple[int, ...], int, float]:
    """Runs by their numbers (``version_N``, ``checkpoint-N``: N, not the file's time), then by the time an
    event file's name records, then by modification time."""
    numbers = tuple(int(m.group(1)) for part in path.relative_to(folder).parts if (m := _NUMBERED.match(part)))
    stamp = _EVENT_TIME.search(path.name)
    return numbers, int(stamp.group(1)) if stamp else 0, path.stat().st_mtime


def _read_file(path: Path) -> History:
    if not path.is_file():
        raise GradpilotError(f"{path} is not a regular file")
    if path.stat().st_size == 0:
        raise GradpilotError(f"{path} is empty")
    name = path.name
    if name.startswith("events.out.tfevents"):
        return read_tensorboard(path)
    if name.endswith((".jsonl", ".ndjson")) or _json_lines(path):
        return read_jsonl(path)
    if name.endswith(".json"):
        return read_trainer_state(path)
    if name.endswith((".csv", ".tsv")) or (name.endswith(".log") and _csv_header(path)):
        return read_csv(path)  # Keras's CSVLogger writes its CSV to training.log by default
    raise GradpilotError(f"{path}: unknown log format; gradpilot reads .csv (or a CSV .log, as Keras writes), "
                         ".jsonl, trainer_state.json and TensorBoard event files")


def _json_lines(path: Path) -> bool:
    """Whether the file holds JSON lines, whatever its name (``log.txt``, Detectron2's ``metrics.json``): its
    first two lines are each a whole JSON object."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in itertools.islice(f, 2)]
    if len(lines) < 2 or not all(line.startswith("{") and line.endswith("}") for line in lines):
        return False
    try:
        return isinstance(json.loads(lines[0]), dict)
    except (ValueError, RecursionError):
        return False


def _csv_header(path: Path) -> bool:
    """Whether a .log file starts with a CSV header that names a loss or an epoch (Keras's CSVLogger)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    names = {n.strip().lower() for n in first.split(",")}
    return len(names) > 1 and bool(names & {"epoch", "loss", "step"})


def _files_inside(folder: Path) -> Iterator[tuple[Path, int]]:
    """Every regular file under ``folder`` with its depth; symlinks leading out of the folder are skipped."""
    root = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        depth = len(Path(dirpath).relative_to(folder).parts)
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_symlink() and not p.resolve().is_relative_to(root):
                continue
            if p.is_file():
                yield p, depth


def _text_lines(path: Path) -> Iterator[str]:
    """The file's lines; bytes that are not UTF-8 become U+FFFD (and then fail as numbers where it matters)."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        yield from f


def read_csv(path: Path) -> History:
    """A CSV with a header row; sparse rows (Lightning logs train and validation on separate rows) are fine, and
    so are ragged ones (fields missing at the end, or extra ones: read by position, with a warning). A last
    line cut short (a run killed while writing) is skipped with a warning."""
    reader = csv.reader(_text_lines(path), delimiter="\t" if path.suffix == ".tsv" else ",")
    columns, warnings = Columns(str(path)), []
    try:
        header = [h.strip().lstrip("\ufeff") for h in next(reader, [])]
        if not any(header):
            raise GradpilotError(f"{path}:1: no header row")
        ragged, pending = _csv_rows(reader, header, columns, path)
    except csv.Error as exc:
        raise GradpilotError(f"{path}:{reader.line_num}: not a readable CSV line ({exc})") from None
    if pending is not None and _ends_with_newline(path):
        _add_ragged(columns, header, path, *pending)
        ragged.append(pending[0])
    elif pending is not None:
        warnings.append(f"{path}:{pending[0]}: the last line is cut short (a run killed while writing?); "
                        "read the complete rows before it")
    if ragged:
        rows = "1 row has" if len(ragged) == 1 else f"{len(ragged)} rows have"
        warnings.append(f"{path}:{ragged[0]}: {rows} another number of fields than the header's {len(header)}; "
                        "read by position (check that the columns line up)")
    if not columns.rows:
        raise GradpilotError(f"{path}: a header but no rows")
    return dataclasses.replace(columns.history(warnings), tool=tool_of(header, path))


def _csv_rows(reader: Any, header: list[str], columns: Columns,
              path: Path) -> tuple[list[int], tuple[int, list[str]] | None]:
    """Every row into ``columns``; a row of another length is held back until the next one shows it was not the
    last (a last line cut short is no ragged row). Returns the lines of the ragged rows read and the one held
    back."""
    ragged: list[int] = []
    pending = None
    for row in reader:
        if pending is not None:
            _add_ragged(columns, header, path, *pending)
            ragged.append(pending[0])
            pending = None
        if not row:
            continue
        if len(row) != len(header):
            pending = (reader.line_num, row)
            continue
        columns.add(dict(zip(header, row, strict=True)), f"{path}:{reader.line_num}")
    return ragged, pending


def _add_ragged(columns: Columns, header: list[str], _path: Path, _lineno: int, row: list[str]) -> None:
    """A row with fields missing at its end, or extra ones, read by position."""
    columns.add(dict(zip(header, row, strict=False)))  # text where a number belongs: that cell is missing


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) in (b"\n", b"\r")


def _parse_json(text: str, where: str, *, whole_file: bool = False) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f"{where}:{exc.lineno}" if whole_file else where
        what = "file" if whole_file else "line"
        raise GradpilotError(f"{at}: not valid JSON ({exc.msg}); a truncated {what}?") from None
    except RecursionError:
        raise GradpilotError(f"{where}: JSON nested too deeply to be a log") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise GradpilotError(f"{where}: not a log value ({str(exc)[:80]})") from None


def read_jsonl(path: Path) -> History:
    """One JSON object per line, e.g. ``{"step": 10, "loss": 0.9, "lr": 0.001}``."""
    columns, warnings = Columns(str(path)), []
    for lineno, line in enumerate(_text_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = _parse_json(line, f"{path}:{lineno}")
        except GradpilotError:
            if not line.endswith("\n") and columns.rows:  # the last line, cut short by a kill
                warnings.append(f"{path}:{lineno}: the last line is cut short; read the complete lines before it")
                break
            raise
        if not isinstance(record, dict):
            raise GradpilotError(f"{path}:{lineno}: expected a JSON object, found {type(record).__name__}")
        columns.add(record)
    if not columns.rows:
        raise GradpilotError(f"{path}: no JSON objects")
    return columns.history(warnings)


def read_trainer_state(path: Path) -> History:
    """Hugging Face Trainer's ``trainer_state.json``: its ``log_history`` holds train and eval entries."""
    state = _parse_json(path.read_bytes().decode("utf-8", errors="replace"), str(path), whole_file=True)
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise GradpilotError(f"{path}: no 'log_history' list; is this a Trainer's trainer_state.json?")
    # the last entry summarises the run ("train_loss" is an average over all of it): not a step
    records = [_unhide_nan(r) for r in history if isinstance(r, dict) and "train_runtime" not in r]
    warnings: list[str] = []
    if not any("loss" in r for r in records) and any("eval_loss" in r for r in records):
        records = [{**r, "loss": r["eval_loss"]} if "eval_loss" in r else r for r in records]
        warnings.append("no training loss in the log (logging_steps is longer than the run: the Trainer's "
                        "default is 500): diagnosed from eval_loss; set logging_steps=10 to see the training curve")
    return dataclasses.replace(from_records(records, str(path), warnings), tool="transformers")


def hidden_nan(loss: Any, grad_norm: Any) -> bool:
    """Whether a Hugging Face Trainer's logged ``loss`` hides a NaN: its ``logging_nan_inf_filter`` (on by
    default) logs ``loss: 0.0`` for a NaN loss, while the gradient norm logged with it stays NaN. A loss other
    than 0.0 beside a non-finite norm is a real loss (fp16's loss scaler skips such steps on its own)."""
    return loss == 0.0 and grad_norm is not None and not _finite(grad_norm)


def _unhide_nan(record: dict[str, Any]) -> dict[str, Any]:
    """A loss ``hidden_nan`` recognises, put back as the NaN it was (trainer_state.json, TensorBoard tags)."""
    for loss, norm in (("loss", "grad_norm"), ("train/loss", "train/grad_norm")):
        if hidden_nan(record.get(loss), record.get(norm)):
            return {**record, loss: float("nan")}
    return record


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True  # not a number at all: the column reader judges it


def tool_of(names: list[str], path: Path) -> str:
    """What wrote a log, from its column or tag names (and its folder): "transformers", "lightning", "keras"."""
    if any(n.startswith(("train/", "eval/")) for n in names):
        return "transformers"
    lightning = any(n.startswith("lr-") or n.endswith(("_step", "_epoch")) for n in names)
    if lightning or "lightning_logs" in path.parts or (path.parent / "hparams.yaml").exists():
        return "lightning"
    if "epoch" in names and "loss" in names and "step" not in names and "val_loss" in names:
        return "keras"
    return ""


def read_tensorboard(folder: Path) -> History:
    """Scalars from one TensorBoard event file (``folder`` may be the file, or a folder: then its newest event
    file — two runs writing one folder are not spliced into one), read with the tensorboard package's reader.
    Scalars TF2 writes as tensor summaries count too."""
    if folder.is_dir():
        files = sorted(folder.glob("events.out.tfevents*"), key=lambda p: _run_order(p, folder))
        if not files:
            raise GradpilotError(f"{folder} holds no TensorBoard event file")
        folder = files[-1]
    warnings = [w for w in [_truncation(folder)] if w]
    rows, tags = _event_rows(folder)
    history = from_records([_unhide_nan(rows[s]) for s in sorted(rows)], str(folder), warnings)
    return dataclasses.replace(history, tool=tool_of(tags, folder))


def keras_pair(folder: Path) -> tuple[Path, Path] | None:
    """The two event files of one Keras run (TF2's TensorBoard callback writes ``train/`` and ``validation/``
    beside each other), or None where ``folder`` is not laid out so."""
    found = []
    for part in ("train", "validation"):
        files = sorted((folder / part).glob("events.out.tfevents*"), key=lambda p: _run_order(p, folder / part))
        if not (folder / part).is_dir() or not files:
            return None
        found.append(files[-1])
    return found[0], found[1]


def read_keras_tensorboard(folder: Path, pair: tuple[Path, Path]) -> History:
    """One Keras run from its ``train/`` and ``validation/`` event files: the validation scalars (``epoch_loss``,
    ``epoch_accuracy``) become ``val_`` columns of the same epochs."""
    rows, _ = _event_rows(pair[0])
    val_rows, _ = _event_rows(pair[1])
    for step, row in val_rows.items():
        into = rows.setdefault(step, {"step": step})
        into.update({f"val_{k}": v for k, v in row.items() if k != "step"})
    warnings = [w for w in (_truncation(pair[0]), _truncation(pair[1])) if w]
    history = from_records([_unhide_nan(rows[s]) for s in sorted(rows)], str(folder), warnings)
    return dataclasses.replace(history, tool="keras")


def _event_rows(path: Path) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """Every scalar of one event file by step (scalar events, and one-number tensor summaries), and the tags."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        from tensorboard.util.tensor_util import make_ndarray
    except ImportError:
        raise GradpilotError("reading TensorBoard logs needs the tensorboard package: "
                             "pip install 'gradpilot[tensorboard]'") from None
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    try:
        acc.Reload()
    except Exception as exc:
        raise GradpilotError(f"{path}: the TensorBoard event file cannot be read ({str(exc)[:120]})") from None
    rows: dict[int, dict[str, Any]] = {}
    tags = list(acc.Tags().get("scalars", []))
    for tag in tags:
        for event in acc.Scalars(tag):
            rows.setdefault(event.step, {"step": event.step})[tag] = event.value
    for tag in acc.Tags().get("tensors", []):
        for tensor in acc.Tensors(tag):
            value = make_ndarray(tensor.tensor_proto)
            if value.size == 1 and value.dtype.kind in "fiu":
                rows.setdefault(tensor.step, {"step": tensor.step})[tag] = float(value.reshape(()))
                if tag not in tags:
                    tags.append(tag)
    if not rows:
        raise GradpilotError(f"{path}: the TensorBoard events hold no scalars (empty or truncated file?)")
    return rows, tags


def _truncation(path: Path) -> str | None:
    """A warning when an event file ends inside a record (a run killed mid-write): TFRecord framing is a
    length (8 bytes), its CRC (4), the data, and the data's CRC (4)."""
    size, at, records = path.stat().st_size, 0, 0
    with open(path, "rb") as f:
        while at < size:
            head = f.read(12)
            if len(head) < 12:
                break
            (length,) = struct.unpack("<Q", head[:8])
            if at + 12 + length + 4 > size:
                break
            f.seek(length + 4, os.SEEK_CUR)
            at += 12 + length + 4
            records += 1
    if at == size:
        return None
    return (f"{path}: the event file is truncated after {records} complete records (a run killed while "
            "writing?); read what was complete")
