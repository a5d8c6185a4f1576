"""How long `gradpilot diagnose LOG` takes per log, as a user or a CI step runs it (a fresh process each time),
beside `losslint check LOG` on the same logs, in the same run of this script.

The logs: one small CSV written here (300 steps, the case a CI step meets) and every log under a folder of real
runs (default: ../shared/wildlogs, the first file or folder of each run). Each command runs ``--repeats`` times per
log, alternating the two so machine load falls on both alike; the table shows each log's median wall time, and the
last rows the median over logs and the share of logs where gradpilot was no slower.

    python benchmarks/diagnose_speed.py                         # losslint from PATH
    python benchmarks/diagnose_speed.py --losslint /opt/ll/bin/losslint --repeats 5 --limit 20

Each tool in a venv of its own, as users install them (a development venv with torch, transformers and an
editable install starts every Python ~50 ms slower):

    python -m venv /tmp/g && /tmp/g/bin/pip install --no-deps . numpy
    python benchmarks/diagnose_speed.py --gradpilot /tmp/g/bin/gradpilot --losslint /tmp/ll/bin/losslint
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WILD = HERE.parent.parent / "shared" / "wildlogs"


def small_csv(folder: Path) -> Path:
    path = folder / "small.csv"
    rows = ["step,loss,val_loss,lr"] + [f"{s},{2.0 * math.exp(-s / 40) + 0.2:.5f},{0.3 if s % 50 == 49 else ''},0.001"
                                         for s in range(300)]
    path.write_text("\n".join(rows) + "\n")
    return path


def real_logs(root: Path, limit: int) -> list[Path]:
    """Each run's folder under the format folders (csv, hf, jsonl, ...), as a user would point at it."""
    if not root.is_dir():
        return []
    runs = sorted(p for fmt in sorted(root.iterdir()) if fmt.is_dir() for p in sorted(fmt.iterdir()))
    return runs[:limit]


def timed(command: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start, done.returncode


def measure(log: Path, gradpilot: list[str], losslint: list[str] | None, repeats: int) -> dict[str, object]:
    ours, theirs, codes = [], [], set()
    for _ in range(repeats):
        seconds, code = timed([*gradpilot, "diagnose", str(log)])
        ours.append(seconds)
        codes.add(code)
        if losslint is not None:
            theirs.append(timed([*losslint, "check", str(log)])[0])
    return {"log": log, "ours": statistics.median(ours), "theirs": statistics.median(theirs) if theirs else None,
            "read": 2 not in codes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losslint", help="the losslint command (default: losslint on PATH)")
    parser.add_argument("--gradpilot", help="the gradpilot command (default: this Python's -m gradpilot.cli); an "
                        "installed copy in a venv of its own times what a user gets, as losslint's venv does")
    parser.add_argument("--logs", type=Path, default=WILD, help="a folder of real runs (format/run/...)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=12, help="at most this many real runs")
    args = parser.parse_args()
    found = args.losslint or shutil.which("losslint")
    losslint = [found] if found else None
    if losslint is None:
        print("losslint not found (pip install losslint, or --losslint PATH): gradpilot's times alone")
    gradpilot = [args.gradpilot] if args.gradpilot else [sys.executable, "-m", "gradpilot.cli"]
    with tempfile.TemporaryDirectory() as folder:
        logs = [small_csv(Path(folder)), *real_logs(args.logs, args.limit)]
        rows = [measure(log, gradpilot, losslint, args.repeats) for log in logs]
    print(f"{'log':<44} {'gradpilot s':>11} {'losslint s':>10} {'ratio':>6}")
    for row in rows:
        name = Path(str(row["log"])).name if row["log"] != logs[0] else "small.csv (300 steps)"
        theirs = row["theirs"]
        ratio = f"{row['ours'] / theirs:.2f}" if isinstance(theirs, float) else "-"  # type: ignore[operator]
        mark = "" if row["read"] else "  (unread)"
        print(f"{name[:44]:<44} {row['ours']:>11.3f} {theirs if theirs is None else f'{theirs:.3f}':>10} "
              f"{ratio:>6}{mark}")
    ours = [float(r["ours"]) for r in rows]  # type: ignore[arg-type]
    print(f"{'median over ' + str(len(rows)) + ' logs':<44} {statistics.median(ours):>11.3f}", end="")
    if losslint is not None:
        theirs_all = [float(r["theirs"]) for r in rows]  # type: ignore[arg-type]
        no_slower = sum(o <= t for o, t in zip(ours, theirs_all, strict=True))
        print(f" {statistics.median(theirs_all):>10.3f} {statistics.median(ours) / statistics.median(theirs_all):>6.2f}")
        print(f"gradpilot no slower than losslint on {no_slower} of {len(rows)} logs")
    else:
        print()


if __name__ == "__main__":
    main()
