"""``gradpilot diagnose`` and ``gradpilot watch``: the commands that read logs. They parse their arguments with
``argparse`` and print plain lines (a table on a terminal), so they start in a fraction of a second — no torch,
no typer — as a CI step or a watcher beside a cluster job wants.

Exit codes a script can use: 0 healthy, or hints only; 1 a finding at or above ``--fail-on`` (default: a sure
problem); 2 bad input or a log that cannot be read; 3 anything unexpected (``GRADPILOT_DEBUG=1`` shows it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradpilot.errors import GradpilotError, describe

if TYPE_CHECKING:
    from gradpilot.diagnosis.findings import Diagnosis, FailOn
    from gradpilot.diagnosis.history import History
    from gradpilot.diagnosis.watch import Seen

FAIL_ON_HELP = ("what fails the run (exit 1): 'sure' problems (default), 'any' finding, or kinds, e.g. "
                "nan,divergence")


def run(argv: list[str]) -> int:
    """Run ``diagnose`` or ``watch`` with ``argv`` (the command's name first); the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has said what was wrong (or printed the help)
        return int(exc.code or 0)
    try:
        code: int = args.handler(args)
        return code
    except GradpilotError as exc:
        _line("error", str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("GRADPILOT_DEBUG"):
            raise
        _line("error", f"{describe(exc, 300)} (GRADPILOT_DEBUG=1 shows where)")
        return 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradpilot", add_help=False)
    commands = parser.add_subparsers(dest="command", required=True)
    diag = commands.add_parser("diagnose", help="what went wrong in a run and what to change, from its log",
                               description="Say what went wrong in a run and what to change, from its log (CSV, JSON "
                               "lines, TensorBoard, trainer_state.json, a run folder). Exit 0 healthy or hints only, "
                               "1 a finding at or above --fail-on, 2 unreadable.")
    diag.add_argument("path", type=Path, help="a log file or a run folder")
    diag.add_argument("--json", dest="as_json", action="store_true", help="print the findings as JSON")
    diag.add_argument("--plot", type=Path, help="write the curves with the findings marked (PNG)")
    diag.add_argument("--html", dest="html_page", type=Path, help="write a self-contained page (HTML)")
    diag.add_argument("--all", dest="every_run", action="store_true",
                      help="diagnose every run in the folder (default: the newest only)")
    _shared(diag)
    diag.set_defaults(handler=_diagnose)
    watch = commands.add_parser("watch", help="follow a live run's log from outside and say what goes wrong",
                                description="Follow a run's log as it grows (a HF output_dir, a Lightning "
                                "metrics.csv, CSV or JSON lines, TensorBoard events), print each finding as it "
                                "appears; at the first finding at or above --fail-on stop the job (--pid, --stop-file) "
                                "and exit 1.")
    watch.add_argument("path", type=Path, help="the log file or run folder to follow")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between reads (default 1)")
    watch.add_argument("--idle", type=float, help="end after this many seconds without the log growing")
    watch.add_argument("--pid", type=int, help="the training process to signal at the first failing finding")
    watch.add_argument("--signal", default="TERM", help="the signal --pid is sent (default TERM)")
    watch.add_argument("--stop-file", type=Path, help="a file to create at the first failing finding (the HF and "
                       "Lightning GradpilotCallback(stop_file=...) stop training when it appears)")
    watch.add_argument("--json", dest="as_json", action="store_true", help="one JSON line per finding")
    _shared(watch)
    watch.set_defaults(handler=_watch)
    return parser


def _shared(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fail-on", default="sure", help=FAIL_ON_HELP)
    way = parser.add_mutually_exclusive_group()
    way.add_argument("--higher-is-better", dest="higher", action="store_const", const=True,
                     help="the logged metric is better higher (say it where its name does not)")
    way.add_argument("--lower-is-better", dest="higher", action="store_const", const=False,
                     help="the logged metric is better lower")


def _fail_on(text: str) -> FailOn:
    from gradpilot.diagnosis.findings import FailOn

    return FailOn.parse(text)


def _diagnose(args: argparse.Namespace) -> int:
    fail_on = _fail_on(args.fail_on)
    if args.every_run:
        return _diagnose_all(args, fail_on)
    from gradpilot import _validate

    for target, flag in ((args.plot, "--plot"), (args.html_page, "--html")):
        if target is not None:
            _validate.writable_file(target, flag)
    history, result = _read(args.path, args.higher)
    for warning in history.warnings:
        _line("warning", warning)
    if args.as_json:
        _out(json.dumps(_as_json(history, result), allow_nan=False))
    else:
        _print(history.source, result)
    if not _drawn(history, result, args):
        return 2
    return fail_on.code(result)


def _read(path: Path, higher: bool | None) -> tuple[History, Diagnosis]:
    from gradpilot.diagnosis.detectors import diagnose
    from gradpilot.diagnosis.logs import read_log

    history = read_log(path)
    if higher is not None:
        history = history.directed(higher)
    return history, diagnose(history)


def _as_json(history: History, result: Diagnosis) -> dict[str, Any]:
    from gradpilot._files import json_safe

    out: dict[str, Any] = json_safe({"source": history.source, "warnings": list(history.warnings),
                                     **result.to_json()})
    return out


def _diagnose_all(args: argparse.Namespace, fail_on: FailOn) -> int:
    """``diagnose --all``: each run of a folder, oldest first; a run that cannot be read is one error line, and
    the others are diagnosed all the same."""
    from gradpilot.diagnosis.logs import find_runs

    if args.plot is not None or args.html_page is not None:
        raise GradpilotError("--all diagnoses several runs: --plot and --html draw one (give the run's own folder "
                             "or file)")
    if not args.path.is_dir():
        raise GradpilotError(f"--all needs a folder of runs; {args.path} is a file")
    failing, broken, out = False, 0, []
    for run_path in find_runs(args.path):
        try:
            history, result = _read(run_path, args.higher)
        except GradpilotError as exc:  # one damaged run costs its own diagnosis, never the others'
            broken += 1
            _line("error", str(exc))
            out.append({"source": str(run_path), "error": str(exc)})
            continue
        failing = failing or bool(fail_on.code(result))
        out.append(_as_json(history, result)) if args.as_json else _print(history.source, result)
    if args.as_json:
        _out(json.dumps(out, allow_nan=False))
    return 2 if broken else int(failing)


def _drawn(history: History, result: Diagnosis, args: argparse.Namespace) -> bool:
    """The picture and the page, each after the findings are out; False when one could not be drawn."""
    ok = True
    for target, draw, what in ((args.plot, _plot, "Curves"), (args.html_page, _page, "Page")):
        if target is None:
            continue
        try:
            draw(history, result, target)
        except Exception as exc:  # a drawing that fails costs the drawing, never the diagnosis
            _line("error", f"could not draw {target}: {describe(exc)}")
            ok = False
            continue
        if not args.as_json:
            _out(f"{what} written to {target}")
    return ok


def _plot(history: History, result: Diagnosis, path: Path) -> None:
    from gradpilot import plots

    plots.plot_diagnosis(history, result, path)


def _page(history: History, result: Diagnosis, path: Path) -> None:
    from gradpilot.report import write_diagnosis_report

    write_diagnosis_report(history, result, path)


def _watch(args: argparse.Namespace) -> int:
    from gradpilot.diagnosis.watch import Watcher, follow, stopper

    if args.interval <= 0 or (args.idle is not None and args.idle <= 0):
        raise GradpilotError("--interval and --idle take a number of seconds above 0")
    stop = stopper(args.pid, args.signal, args.stop_file)
    watcher = Watcher(args.path, fail_on=_fail_on(args.fail_on), higher_is_better=args.higher)
    if not args.as_json:
        _out(f"watching {args.path} (every {args.interval:g} s" +
             (f", until {args.idle:g} s without growing)" if args.idle else ")"))
    code = follow(watcher, tell=lambda seen: _tell(seen, args.as_json), interval=args.interval, idle=args.idle,
                  stop=stop)
    if code == 2:
        _line("error", f"{args.path}: {watcher.error or 'no log appeared'}")
    elif not args.as_json:
        _out("stopped: a failing finding" if code == 1 else "the log stopped growing: nothing failing")
    return code


def _tell(seen: Seen, as_json: bool) -> None:
    for f in seen.new:
        if as_json:
            _out(json.dumps({"source": seen.history.source, **f.to_json()}, allow_nan=False, default=str))
        else:
            _out(f"{f.kind}{'' if f.sure else ' (a hint)'} at {f.unit} {f.end:g}: {f.evidence} — {f.advice}")


def _print(source: str, result: Diagnosis) -> None:
    """The diagnosis: a table on a terminal, plain lines elsewhere (a CI log, a pipe)."""
    if sys.stdout.isatty():
        _table(source, result)
        return
    lines = [f"Diagnosis of {source}", *(f"assumed: {a}" for a in result.assumed)]
    for f in result.findings:
        lines += [f"{f.kind}{'' if f.sure else ' (a hint)'}  {f.unit} {f.start:g}–{f.end:g}  "
                  f"(confidence {f.confidence:.0%})", f"  evidence: {f.evidence}", f"  what to change: {f.advice}"]
    lines.append(f"Learning rate {result.lr_verdict}. {result.lr_reason}")
    _out("\n".join(lines))


def _table(source: str, result: Diagnosis) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(emoji=False)
    for note in result.assumed:
        console.print(f"assumed: {note}", highlight=False, markup=False)
    table = Table(title=f"Diagnosis of {source}", show_lines=True)
    for col in ("finding", "where", "evidence", "confidence", "what to change"):
        table.add_column(col, overflow="fold")
    for f in result.findings:
        table.add_row(f.kind + ("" if f.sure else " (hint)"), f"{f.unit} {f.start:g}–{f.end:g}", f.evidence,
                      f"{f.confidence:.0%}", f.advice)
    console.print(table)
    console.print(f"[bold]Learning rate {result.lr_verdict}.[/] {result.lr_reason.replace('[', chr(92) + '[')}")


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _line(kind: str, text: str) -> None:
    sys.stderr.write(f"{kind}: {' '.join(text.split())}\n")
    sys.stderr.flush()
