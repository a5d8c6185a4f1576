"""Does `gradpilot probe` read the LR direction from a checkpoint, at a tenth of a run, and does its remedy help?

On the LR benchmark's tasks (benchmarks/lr_corpus.py: each with its constant-LR grid and grid-best LR), a run
is trained at a multiple of the best LR for half its steps (gradpilot's fit, checkpointing), then probed from
that checkpoint. The label is the grid's, as in benchmarks/diagnose.py: a run that loses ≥10% of the achievable
improvement — regret = (best − metric) / (best − untrained) — should "lower" its LR if it is ≥3× the best,
"raise" it if ≤⅓ of it; every other run should "keep" it. The remedy is tested: the whole run trained again at
the LR the probe names (same steps, two seeds), and the share of the lost performance it wins back reported.
Nothing here is fitted: the probe's constants (factors ×⅓ ×1 ×3, a tenth of a run, a 20% margin) were set
before these runs were made.

    python benchmarks/probe.py             # every task (grids cached in benchmarks/results/)
    python benchmarks/probe.py --quick     # four tasks
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

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diagnose_corpus import GRID_CACHE, bench_tasks
from lr_scoring import Cache, Scorer
from lr_tasks import BenchTask

import gradpilot
from gradpilot.probing import probe

MULTIPLIERS = (0.01, 0.1, 1.0, 10.0, 100.0)
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
    said = {"too high": "lower", "too low": "raise", "about right": "keep"}[found.verdict]
    before = scorer.regret(lr)
    after = scorer.regret(found.suggested_learning_rate) if said != "keep" else before
    return {"task": bt.name, "family": bt.family, "m": m, "label": label(scorer, lr, m), "said": said,
            "cost": found.cost_runs, "regret": before, "after": after, "seconds": found.seconds,
            "losses": [list(x) for x in found.losses], "notes": list(found.notes),
            "start_loss": found.start_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    args = parser.parse_args()
    cache = Cache(GRID_CACHE, False)
    tasks = [bt for bt in bench_tasks() if not args.quick or bt.name in QUICK]
    rows = []
    for bt in tasks:
        if bt.name.startswith("minilm"):
            continue  # a pretrained model: its grid runs are not in the cache
        scorer = Scorer(bt, cache)
        for m in MULTIPLIERS:
            rows.append(one(bt, m, scorer))
            r = rows[-1]
            console.print(f"{bt.name} ×{m:g}: label {r['label']}, probe {r['said']} ({r['cost']:.1%} of a run)")
    _table(rows)
    out = Path(__file__).parent / "results" / "probe.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


def _table(rows: list[dict[str, object]]) -> None:
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
    wrong = [r for r in rows if r["label"] != r["said"]]
    for r in wrong:
        console.print(f"  wrong: {r['task']} ×{r['m']:g}: label {r['label']}, probe {r['said']} "
                      f"(regret {float(r['regret']):.2f})")
    if any(not math.isfinite(float(r["cost"])) for r in rows):
        console.print("some costs are not finite")


if __name__ == "__main__":
    main()
