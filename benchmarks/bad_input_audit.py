"""Bad input, tried the way a new user would: every case, and how gradpilot answered it.

Each case is something a user gets wrong (a flag, a task file, a damaged log, a nonsense number, a
checkpoint someone else wrote) and what a good answer is: a clear one-line error, or a specific correct
behaviour (a warning and the complete rows read, a search that stops at the dataset's size, ...). Each is
run as the user would run it — the command in its own process, the API in this one — and classed as:

- clear: refused with one line (``error: ...``, exit 2 on the command line — 3 when the user's own code raised;
  a one-line GradpilotError in Python)
- handled: the correct behaviour the case asks for
- traceback: a Python traceback, or an exception that is not gradpilot's one-line error
- silent: accepted and wrong (no error where one was due, or the behaviour is not the right one)
- hang: still running after the time limit
- lost: finished work thrown away by a failure after it

Also prints the start-up time of ``gradpilot diagnose --help`` and ``gradpilot diagnose FILE``.

    python benchmarks/bad_input_audit.py [--only diagnose] [--timeout 60]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import audit_cases
import audit_cases_tune

OUTCOMES = ("clear", "handled", "traceback", "silent", "hang", "lost")
PROGRESS = re.compile(r"^tune [\d.]+/\S+ runs, \d+ s: ")


@dataclass(frozen=True)
class Outcome:
    group: str
    name: str
    outcome: str
    detail: str


def run_cli(args: list[str], cwd: Path, timeout: float) -> tuple[int | None, str, str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    env.pop("GRADPILOT_DEBUG", None)
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "gradpilot.cli", *args], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, "", "", time.perf_counter() - t0
    return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0


def classify_cli(case: dict[str, Any], rc: int | None, out: str, err: str) -> tuple[str, str]:
    text = out + err
    if rc is None:
        return "hang", "timed out"
    if "Traceback (most recent call last)" in text:
        return "traceback", text.strip().splitlines()[-1][:120]
    expect = case["expect"]
    if expect == "error":  # tune's progress lines off a terminal are not part of the answer
        lines = [line for line in err.splitlines() if line.strip() and not PROGRESS.match(line)]
        if rc in (2, 3) and len(lines) == 1 and lines[0].startswith("error:"):  # 3: an error in the user's own code
            if case.get("keeps") and case["keeps"] not in out:
                return "lost", "the finished result was not printed"
            return "clear", lines[0][:120]
        if rc == 0:
            return "silent", "exit 0: " + (out.strip().splitlines() or [""])[-1][:100]
        return "traceback" if rc not in (1, 2, 3) else "silent", f"exit {rc}: {text.strip()[:100]}"
    ok, why = expect(rc, out, err)
    if ok:
        return "handled", why
    if case.get("keeps") and case["keeps"] not in out:
        return "lost", why
    return "silent", why


def classify_api(case: dict[str, Any], work: Path) -> tuple[str, str]:
    from gradpilot import GradpilotError

    try:
        value = case["call"](work)
    except GradpilotError as exc:
        if case["expect"] == "error" and "\n" not in str(exc):
            return "clear", str(exc)[:120]
        return "silent", f"an error where {case['expect']!r} was due: {str(exc)[:100]}"
    except Exception as exc:
        return "traceback", f"{type(exc).__name__}: {str(exc)[:100]}"
    if case["expect"] == "error":
        return "silent", f"accepted: {value!r}"[:120]
    ok, why = case["expect"](value)
    return ("handled" if ok else "silent"), why


def startup(cwd: Path, log: Path) -> dict[str, float]:
    times: dict[str, list[float]] = {"gradpilot diagnose --help": [], "gradpilot diagnose FILE": [],
                                     "python -c pass (the interpreter alone)": []}
    for _ in range(5):
        times["gradpilot diagnose --help"].append(run_cli(["diagnose", "--help"], cwd, 60)[3])
        times["gradpilot diagnose FILE"].append(run_cli(["diagnose", str(log)], cwd, 60)[3])
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times["python -c pass (the interpreter alone)"].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only the cases whose group contains this word")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds before a case counts as a hang")
    parser.add_argument("--json", type=Path, help="also write every outcome to this file")
    args = parser.parse_args()
    console = Console()
    results: list[Outcome] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        with console.status("running cases…") as status:
            for case in [*audit_cases.cli_cases(base), *audit_cases_tune.cli_cases(base)]:
                if args.only and args.only not in case["group"]:
                    continue
                status.update(f"{case['group']}: {case['name']}")
                rc, out, err, _ = run_cli(case["args"], case.get("cwd", base), args.timeout)
                results.append(Outcome(case["group"], case["name"], *classify_cli(case, rc, out, err)))
            for i, case in enumerate([*audit_cases.api_cases(), *audit_cases_tune.api_cases()]):
                if args.only and args.only not in case["group"]:
                    continue
                status.update(f"{case['group']}: {case['name']}")
                work = base / f"api{i}"
                work.mkdir()
                results.append(Outcome(case["group"], case["name"], *classify_api(case, work)))
            status.update("start-up times…")
            log = base / "startup.csv"
            log.write_text("step,loss,lr\n" + "".join(f"{s},{2.0 * 0.99 ** s},0.001\n" for s in range(500)))
            times = startup(base, log)
    report(console, results, times)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1))


def report(console: Console, results: list[Outcome], times: dict[str, float]) -> None:
    bad = Table(title="Cases not answered well")
    for col in ("group", "case", "outcome", "detail"):
        bad.add_column(col, overflow="fold")
    for r in results:
        if r.outcome not in ("clear", "handled"):
            bad.add_row(r.group, r.name, r.outcome, r.detail)
    if bad.row_count:
        console.print(bad)
    table = Table(title="Bad input, tried as a new user would")
    table.add_column("group")
    for col in ("tried", *OUTCOMES):
        table.add_column(col, justify="right")
    groups = sorted({r.group for r in results})
    for g in [*groups, "all"]:
        rows = [r for r in results if g in ("all", r.group)]
        table.add_row(f"[bold]{g}[/]" if g == "all" else g, str(len(rows)),
                      *(str(sum(r.outcome == o for r in rows)) for o in OUTCOMES))
    console.print(table)
    start = Table(title="Start-up (median of 5, wall seconds, 2 cores)")
    start.add_column("command")
    start.add_column("seconds", justify="right")
    for k, v in times.items():
        start.add_row(k, f"{v:.2f}")
    console.print(start)


Check = Callable[[Any], tuple[bool, str]]

if __name__ == "__main__":
    main()
