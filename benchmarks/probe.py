"""Does `gradpilot probe` read the LR direction from a checkpoint, at a tenth of a run, and does its remedy help?

On the LR benchmark's tasks (benchmarks/lr_corpus.py: each with its constant-LR grid and grid-best LR), a run
is trained at a multiple of the best LR for half its steps (gradpilot's fit, checkpointing), then probed from
that checkpoint. The label is the grid's, as in benchmarks/diagnose.py: a run that loses ≥10% of the achievable
improvement — regret = (best − metric) / (best − untrained) — should "lower" its LR if it is ≥3× the best,
"raise" it if ≤⅓ of it; every other run should "keep" it. The remedy is tested: the whole run trained again at
the LR the probe names (same steps, two seeds), and the share of the lost performance it wins back reported.
The probe's rule (the cooldown's share, the margins, what the log must show before "too high") was chosen
on these runs: every branch each could take is recorded, and benchmarks/probe_rule.py replays the candidates
leave-one-family-out. The five tasks of --held-out were not looked at while choosing it.

    python benchmarks/probe.py             # every task (grids cached in benchmarks/results/)
    python benchmarks/probe.py --quick     # four tasks
    python benchmarks/probe.py --held-out  # the five tasks written after the probe's rule was chosen
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diagnose_corpus import GRID_CACHE, bench_tasks
from lr_corpus import TASKS
from lr_scoring import Cache, Scorer
from lr_tasks import BenchTask

import gradpilot
from gradpilot.diagnosis.detectors import diagnose
from gradpilot.probing.measure import SHARE, _branch_batches, _told_by_log, _Walk, probe
from gradpilot.train.starts import read_start

MULTIPLIERS = (0.01, 0.1, 1.0, 10.0, 100.0)
EVERY_FACTOR = (1 / 27, 1 / 9, 1 / 3, 1.0, 3.0, 9.0, 27.0)  # each branch any walk can reach, for benchmarks/probe_rule.py
COOLDOWNS = (0.25, 0.5, 1.0)  # shares of a branch spent decaying its LR, for benchmarks/probe_rule.py
QUICK = ("spirals-mlp-adamw", "digits-cnn-sgdm", "friedman-mlp-sgd", "count-gru-rmsprop")
console = Console(width=150)


def label(scorer: Scorer, lr: float, m: float) -> str:
    if scorer.regret(lr) < 0.1:
        return "keep"
    return "lower" if m >= 3 else "raise" if m <= 1 / 3 else "keep"


def as_run(bt: BenchTask, seed: int) -> gradpilot.Task:
    """The task with its epochs set to the benchmark's steps (so a probe's cost is against that run)."""
    task = bt.make(seed)
    per_epoch = max(1, len(task.train_loader(seed)))
    return dataclasses.replace(task, epochs=max(1, round(bt.steps / per_epoch)))


def one(bt: BenchTask, m: float, scorer: Scorer) -> dict[str, object]:
    task = as_run(bt, 0)
    lr = float(f"{m * scorer.best_lr:.3g}")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gradpilot.fit(task, task.make_optimizer(lr), epochs=max(1, task.epochs // 2), checkpoint_dir=folder)
        found = probe(task, folder)
        every, told = _every_branch(task, folder)
    said = {"too high": "lower", "too low": "raise", "about right": "keep", "unsure": "keep"}[found.verdict]
    before = scorer.regret(lr)
    after = scorer.regret(found.suggested_learning_rate) if said != "keep" else before
    return {"task": bt.name, "family": bt.family, "m": m, "label": label(scorer, lr, m), "said": said,

            "cost": found.cost_runs, "regret": before, "after": after, "seconds": found.seconds,
            "losses": [list(x) for x in found.losses], "notes": list(found.notes),
            "start_loss": found.start_loss, "every": every, "told": told,
            "higher_is_better": task.higher_is_better, "lr": lr, "suggested": found.suggested_learning_rate,
            "regret_at": {f"{f:.6g}": scorer.interpolated(lr * f) for f in EVERY_FACTOR}}


def _every_branch(task: gradpilot.Task, folder: str) -> tuple[dict[str, Any], list[object] | None]:
    """Every factor's branch from the same checkpoint (the same seed as the probe's), with each share of the branch
    spent cooling down in ``COOLDOWNS``: validation losses and scores; and the log's verdict."""
    start = read_start(Path(folder), task.model)
    assert start.lr is not None
    steady, cooldown, most = _branch_batches(task, SHARE)
    out: dict[str, Any] = {}
    for share in COOLDOWNS:
        cool = max(1, round(share * (steady + cooldown)))
        walk = _Walk(task, start, start.lr, 0, (steady + cooldown - cool, cool, most), Path(folder))
        walk.evaluate_start()
        for f in EVERY_FACTOR:
            walk.branch(f)
        out[f"{share:g}"] = {"losses": [list(x) for x in walk.losses], "scores": [list(x) for x in walk.scores]}
    task.model.load_state_dict(start.weights)
    told = _told_by_log(start, start.lr)
    if start.history is not None:
        out["log"] = [[f.kind, f.lr, f.sure] for f in diagnose(start.history).findings]
    return out, list(told) if told is not None else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--held-out", action="store_true",
                        help="the five tasks written after the probe's rule was chosen (lr_tasks_late.py), instead")
    args = parser.parse_args()
    cache = Cache(GRID_CACHE, False)
    tasks = [bt for bt in (TASKS if args.held_out else bench_tasks()) if bt.held_out == args.held_out
             and (not args.quick or bt.name in QUICK)]
    rows: list[dict[str, object]] = []
    out = Path(__file__).parent / "results" / ("probe_held_out.json" if args.held_out else "probe.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    for bt in tasks:
        if bt.name.startswith("minilm"):
            continue  # a pretrained model: its grid runs are not in the cache
        scorer = Scorer(bt, cache)
        for m in MULTIPLIERS:
            rows.append(one(bt, m, scorer))
            r = rows[-1]
            console.print(f"{bt.name} ×{m:g}: label {r['label']}, probe {r['said']} ({r['cost']:.1%} of a run)")
            out.write_text(json.dumps(rows, indent=1))  # kept as it goes: benchmarks/probe_rule.py reads it
    _table(rows)


def _table(rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"gradpilot probe from a half-run checkpoint: {len(rows)} runs, {len({r['task'] for r in rows})} tasks")
    for col in ("multiplier", "runs", "direction right", "calls right", "cost (runs)", "remedy recovers"):
        table.add_column(col, justify="right")
    for m in (*MULTIPLIERS, None):
        group = [r for r in rows if m is None or r["m"] == m]
        right = sum(r["label"] == r["said"] for r in group)
        calls = [r for r in group if r["said"] != "keep"]
        good = sum(r["label"] == r["said"] for r in calls)
        off = [r for r in group if r["label"] != "keep" and r["said"] == r["label"]]
        rec = [(float(r["regret"]) - float(r["after"])) / float(r["regret"]) for r in off if float(r["regret"]) > 0]
        table.add_row("all" if m is None else f"×{m:g}", str(len(group)), f"{right / len(group):.2f}",
                      f"{good}/{len(calls)}", f"{np.mean([float(r['cost']) for r in group]):.3f}",
                      f"{np.mean(rec):.0%} ({len(rec)})" if rec else "–")
    console.print(table)
    for r in rows:
        if r["label"] != r["said"]:
            console.print(f"  wrong: {r['task']} ×{r['m']:g}: label {r['label']}, probe {r['said']} "
                          f"(regret {float(r['regret']):.2f})")
    if any(not math.isfinite(float(r["cost"])) for r in rows):
        console.print("some costs are not finite")
    _yardstick(rows)


OFF, GOOD = 0.1, 0.05  # a run whose regret against the grid is at least OFF is off; under GOOD, inside the plateau


def _yardstick(rows: list[dict[str, Any]]) -> None:
    """The probe judged by what following it does, per family and in all: on off runs the share of the lost
    performance its advice wins back (a "keep" wins none back); on good runs what its advice costs in regret; a
    confident call ("too high" / "too low") right against the grid's label, and how many of the off runs get one."""
    table = Table(title="the probe's yardstick: what following it does (targets: ≥ 50% won back, ≤ 0.02 cost, "
                        "≥ 90% of confident calls right)")
    for col in ("family", "off runs", "won back", "good runs", "cost on good", "confident calls right",
                "coverage of off runs", "probe cost (runs)"):
        table.add_column(col, justify="right")
    families = sorted({str(r["family"]) for r in rows})
    for family in (*families, None):
        group = [r for r in rows if family is None or r["family"] == family]
        off = [r for r in group if float(r["regret"]) >= OFF]
        good = [r for r in group if float(r["regret"]) < GOOD]
        won = [(float(r["regret"]) - float(r["after"])) / float(r["regret"]) for r in off]
        cost = [float(r["after"]) - float(r["regret"]) for r in good]
        calls = [r for r in group if r["said"] != "keep"]
        right = sum(r["said"] == r["label"] for r in calls)
        covered = sum(r["said"] != "keep" for r in off)
        table.add_row("all" if family is None else family, str(len(off)),
                      f"{np.mean(won):.0%}" if won else "–", str(len(good)),
                      f"{np.mean(cost):+.3f}" if cost else "–", f"{right}/{len(calls)}",
                      f"{covered}/{len(off)}" if off else "–", f"{np.mean([float(r['cost']) for r in group]):.3f}")
    console.print(table)


if __name__ == "__main__":
    main()
