"""How the probe turns its branches into a verdict, chosen leave-one-family-out over what benchmarks/probe.py
recorded (results/probe.json): every branch (×1/27 to ×27) from each half-run checkpoint, cooling down over a
quarter, half or all of it, and the diagnosis of the run's log. Each candidate rule — the cooldown's share,
the margins a lower and a higher branch must win by, and what the log must show before "too high" — is replayed
on those branches, walk included; a family's figure is the rule chosen on the other families.

    python benchmarks/probe.py         # records the branches (and measures the shipped rule for real)
    python benchmarks/probe_rule.py    # the candidates, in-sample, and the leave-one-family-out figure
    python benchmarks/probe_rule.py --no-log   # as if no checkpoint had a log beside it
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

RESULTS = Path(__file__).parent / "results" / "probe.json"
VERDICT = {"too high": "lower", "too low": "raise"}
console = Console(width=140)


@dataclass(frozen=True)
class Rule:
    cooldown: str  # the share of each branch spent cooling down, as recorded ("0.25", "0.5", "1")
    tie_lower: float  # a lower branch's gain must beat ×1's by this share of it
    tie_higher: float  # ... a higher one's
    log: str  # "sure": only a sure sign in the log overrides; "agree": a lower verdict needs a sign of it too


SHIPPED = Rule("0.5", 0.05, 0.3, "agree")
RULES = [Rule(c, lo, hi, g) for c, lo, hi, g in itertools.product(
    ("0.25", "0.5", "1"), (0.05, 0.1, 0.3, 0.5, 1.0), (0.05, 0.1, 0.3, 0.5, 1.0), ("sure", "agree"))]


def verdict(r: dict[str, Any], rule: Rule, no_log: bool) -> tuple[str, float]:
    """The verdict and the factor named, as the probe would give them under ``rule``."""
    if not r["every"] or not math.isfinite(r["start_loss"] or math.nan):
        return "lower", 0.1  # the checkpoint had already blown up
    loss = {round(f, 6): (-v if math.isfinite(v) else -math.inf) for f, v in r["every"][rule.cooldown]["losses"]}
    log = [] if no_log else r["every"].get("log") or []
    told = None if no_log or not r["told"] else VERDICT.get(r["told"][0])
    tried = [1.0, 3.0, round(1 / 3, 6)]
    gains = {f: loss[f] + r["start_loss"] for f in tried}
    best = max(gains, key=lambda f: gains[f])
    tie = rule.tie_lower if best < 1 else rule.tie_higher
    said = "keep"
    if best != 1.0 and gains[best] - gains[1.0] > max(tie * abs(gains[best]), 1e-4 * abs(r["start_loss"])):
        said = "raise" if best > 1 else "lower"
    hinted = any(d == "lower" for _, d, _ in log) or not math.isfinite(gains[1.0])
    if said == "lower" and rule.log == "agree" and not hinted:
        said = "keep"
    said = told or said
    return said, 1.0 if said == "keep" else _walk(loss, tried, said)


def _walk(loss: dict[float, float], tried: list[float], said: str) -> float:
    side = [f for f in tried if (f < 1 if said == "lower" else f > 1)]
    best = max(side, key=lambda f: loss[f])
    while best in (min(tried), max(tried)) and len(tried) < 5:
        step = round(best * 3 if best > 1 else best / 3, 6)
        tried.append(step)
        side.append(step)
        best = max(side, key=lambda f: loss[f])
    return best


def accuracy(rows: list[dict[str, Any]], rule: Rule, no_log: bool) -> float:
    return float(np.mean([verdict(r, rule, no_log)[0] == r["label"] for r in rows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-log", action="store_true", help="as if no checkpoint had its log beside it")
    args = parser.parse_args()
    rows = json.loads(RESULTS.read_text())
    ranked = sorted(RULES, key=lambda rule: -accuracy(rows, rule, args.no_log))
    console.print(f"{len(rows)} probes, {len(RULES)} candidate rules; in-sample, the best:")
    for rule in ranked[:5]:
        console.print(f"  {accuracy(rows, rule, args.no_log):.3f}  {rule}")
    console.print(f"  {accuracy(rows, SHIPPED, args.no_log):.3f}  shipped: {SHIPPED}")
    said, chosen = [], Counter[Rule]()
    for family in sorted({r["family"] for r in rows}):
        rest = [r for r in rows if r["family"] != family]
        rule = max(RULES, key=lambda c: (accuracy(rest, c, args.no_log), c == SHIPPED))
        chosen[rule] += 1
        said += [(r, verdict(r, rule, args.no_log)[0]) for r in rows if r["family"] == family]
    calls = [(r, s) for r, s in said if s != "keep"]
    right = sum(s == r["label"] for r, s in said)
    console.print(f"leave-one-family-out: direction {right / len(said):.2f} ({len(said)} probes), calls right "
                  f"{sum(s == r['label'] for r, s in calls)}/{len(calls)}; by multiplier "
                  + ", ".join(f"×{m:g} {np.mean([s == r['label'] for r, s in said if r['m'] == m]):.2f}"
                              for m in sorted({r["m"] for r in rows})))
    console.print("chosen by the folds: " + "; ".join(f"{rule} ×{n}" for rule, n in chosen.most_common(4)))


if __name__ == "__main__":
    main()
