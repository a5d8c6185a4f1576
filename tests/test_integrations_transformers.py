"""gradpilot on a real Hugging Face Trainer: a 2-layer BERT on a toy task, on CPU."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from torch.utils.data import Dataset

transformers = pytest.importorskip("transformers", reason="transformers is in the test extra")
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from gradpilot.errors import GradpilotError  # noqa: E402
from gradpilot.integrations.transformers import DIAGNOSIS_FILE, GradpilotCallback, find_lr  # noqa: E402
from gradpilot.tuning.state import TuneRecord  # noqa: E402


class Toy(Dataset):
    """Token sequences labelled by whether their first token is in the upper half of the vocabulary."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, 100, (n, 12), generator=g)
        self.labels = (self.ids[:, 0] > 52).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": self.labels[i]}


def trainer(tmp_path, lr: float, *, callback=None, steps: int = 60, accumulation: int = 1, **extra) -> Trainer:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32)
    options = {"report_to": "none", "save_strategy": "no", "logging_steps": 2, **extra}
    args = TrainingArguments(output_dir=str(tmp_path / "out"), learning_rate=lr, per_device_train_batch_size=16,
                             gradient_accumulation_steps=accumulation, max_steps=steps,
                             eval_strategy="steps", eval_steps=20, lr_scheduler_type="constant", optim="sgd",
                             use_cpu=True, disable_tqdm=True, **options)
    return Trainer(model=BertForSequenceClassification(config), args=args, train_dataset=Toy(512, 0),
                   eval_dataset=Toy(128, 1), data_collator=default_data_collator,
                   callbacks=[callback] if callback is not None else None)


def test_find_lr_uses_the_trainer_s_pieces_and_leaves_everything_as_it_was(tmp_path):
    t = trainer(tmp_path, 0.05, accumulation=2)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    calls = []
    original = t.compute_loss
    t.compute_loss = lambda model, inputs, **kw: calls.append(len(inputs["labels"])) or original(model, inputs, **kw)
    result = find_lr(t, num_steps=20, end_lr=10.0)
    assert 1e-4 < result.suggestion < 10 and len(result.lrs) <= 20
    assert set(calls) == {16} and len(calls) == 2 * len(result.lrs)  # its batch size, its accumulation
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())  # bit for bit
    assert t.optimizer is None and t.state.global_step == 0
    with pytest.raises(GradpilotError, match=r"needs a transformers\.Trainer"):
        find_lr(object())  # type: ignore[arg-type]


def test_the_callback_names_the_divergence_a_100x_lr_causes(tmp_path, caplog):
    good, bad = GradpilotCallback(), GradpilotCallback()
    trainer(tmp_path / "good", 0.05, callback=good).train()
    with caplog.at_level(logging.WARNING, logger="gradpilot.integrations.transformers"):
        trainer(tmp_path / "bad", 5.0, callback=bad).train()
    report = json.loads((tmp_path / "bad" / "out" / DIAGNOSIS_FILE).read_text())
    kinds = {f["kind"] for f in report["findings"] + report["raised"]}
    assert kinds & {"divergence", "nan"} and report["learning_rate"]["verdict"] == "too high"
    assert any("learning_rate" in f["remedy"] for f in report["findings"]) and report["actions"] == []
    assert any("gradpilot: divergence" in r.message or "gradpilot: nan" in r.message for r in caplog.records)
    fine = json.loads((tmp_path / "good" / "out" / DIAGNOSIS_FILE).read_text())
    assert not {f["kind"] for f in fine["findings"]} & {"divergence", "nan"}
    assert len(bad.monitor.steps) == 30  # one point per logging step: the trainer's own logs, no extra sync


def test_autopilot_lowers_the_lr_in_the_trainer_s_optimizer(tmp_path):
    pilot = GradpilotCallback(autopilot=True, check_every=3)
    t = trainer(tmp_path, 5.0, callback=pilot)
    t.train()
    assert pilot.monitor.actions and pilot.monitor.actions[0].kind in ("divergence", "nan", "oscillation")
    assert t.optimizer.param_groups[0]["lr"] < 5.0 and t.lr_scheduler.base_lrs[0] < 5.0
    report = json.loads((tmp_path / "out" / DIAGNOSIS_FILE).read_text())
    assert report["actions"][0]["description"].startswith(pilot.monitor.actions[0].kind)


def test_a_hidden_nan_is_read_as_nan():
    from gradpilot.integrations.transformers import _true_loss

    assert math.isnan(_true_loss({"loss": 0.0, "grad_norm": float("nan")}))  # the trainer's filter hid a NaN
    assert _true_loss({"loss": 0.0, "grad_norm": 1.0}) == 0.0
    assert _true_loss({"loss": 2.5, "grad_norm": float("inf")}) == 2.5  # a real loss: fp16's scaler skipped a step
    assert _true_loss({"loss": 1.5}) == 1.5


def test_diagnose_reads_the_last_checkpoint_and_the_tensorboard_runs_a_trainer_writes(tmp_path):
    from typer.testing import CliRunner

    from gradpilot.cli import app
    from gradpilot.diagnosis.logs import read_log

    t = trainer(tmp_path, 5.0, save_strategy="steps", save_steps=20, report_to="tensorboard")
    t.train()
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-40", "checkpoint-60"]
    (out / "checkpoint-20" / "trainer_state.json").touch()  # the oldest checkpoint, touched last
    history = read_log(out)
    assert "checkpoint-60" in history.source and len(history.train_loss) == 30
    assert any("3 runs in this folder" in w for w in history.warnings)
    got = json.loads(CliRunner().invoke(app, ["diagnose", str(out), "--json"]).stdout)
    assert got["learning_rate"]["verdict"] == "too high" and "checkpoint-60" in got["source"]
    assert any(f["remedy"].get("learning_rate", 5.0) < 5.0 for f in got["findings"])  # TrainingArguments names
    board = json.loads(CliRunner().invoke(app, ["diagnose", str(out / "runs"), "--json"]).stdout)
    assert "tfevents" in board["source"] and board["learning_rate"]["verdict"] == "too high"
    assert {f["kind"] for f in board["findings"]} == {f["kind"] for f in got["findings"]}  # one run, two formats


MAKE_TRAINER = """
import torch
from transformers import (BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments,
                          default_data_collator)
from tests.test_integrations_transformers import Toy

SEEN = {"trains": [], "evaluations": 0, "dtypes": set()}


class Watch(TrainerCallback):  # the user's own callback, on the user's own trainer
    def on_train_begin(self, args, state, control, **kwargs):
        SEEN["trains"].append(state.max_steps)

    def on_evaluate(self, args, state, control, **kwargs):
        SEEN["evaluations"] += 1


class Recording(BertForSequenceClassification):
    def forward(self, input_ids=None, attention_mask=None, labels=None):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        if self.training:
            SEEN["dtypes"].add(out.logits.dtype)  # what mixed precision the training forward ran in
        return out


def make_trainer(plan: dict) -> Trainer:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32)
    settings = {"learning_rate": 1e-3, "per_device_train_batch_size": 16, "num_train_epochs": 2,
                "weight_decay": 0.01, **plan}
    args = TrainingArguments(output_dir=OUT, report_to="none", use_cpu=True, disable_tqdm=True, bf16=BF16,
                             logging_steps=4, **settings)
    return Trainer(model=Recording(config), args=args, train_dataset=Toy(512, 0), eval_dataset=Toy(128, 1),
                   data_collator=default_data_collator, callbacks=[Watch()])
"""


def _make_trainer_file(tmp_path, *, bf16: bool = False):
    source = tmp_path / "hf_task.py"
    source.write_text(MAKE_TRAINER.replace("OUT", repr(str(tmp_path / "trainer"))).replace("BF16", repr(bf16)))
    return source


def test_tune_on_a_make_trainer_file_writes_the_plan_the_trainer_takes_back(tmp_path):
    import importlib.util
    import sys
    from pathlib import Path

    from typer.testing import CliRunner

    from gradpilot.cli import app

    source = _make_trainer_file(tmp_path)
    result = CliRunner().invoke(app, ["tune", str(source), "--out", str(tmp_path / "tune"), "--budget", "2",
                                      "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plan"]
    assert plan["per_device_train_batch_size"] in (4, 8, 16, 32, 64) and plan["learning_rate"] > 0
    assert plan["lr_scheduler_type"] == "warmup_stable_decay"
    spec = importlib.util.spec_from_file_location("hf_task_again", source)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    spec.loader.exec_module(module)
    again = module.make_trainer(plan)  # what the user pastes back
    assert again.args.learning_rate == plan["learning_rate"]
    assert again.args.num_train_epochs == plan["num_train_epochs"]
    assert again.args.lr_scheduler_kwargs == plan["lr_scheduler_kwargs"]
    record = TuneRecord.read(tmp_path / "tune" / "tune.json")
    assert record.stage("lr_range").decision.suggestion > 0 and record.stage("lr_search").evidence.trials
    from gradpilot.task_file import load_task

    task = load_task(source)  # the trainer's pieces
    assert task.max_grad_norm == 1.0 and task.collate_fn is default_data_collator and task.loss_fn is None
    assert task.batch_size == 16 and task.lr == 1e-3 and task.epochs == 2 and task.runner is not None
    assert type(task.make_optimizer(0.1)).__name__ == "AdamW" and task.make_optimizer(0.1).param_groups[1]["weight_decay"] == 0


def test_every_run_of_a_make_trainer_tune_goes_through_the_user_s_trainer_in_its_precision(tmp_path):
    """The user's callback sees each short run, each branch and the trunk's stretches as Trainer.train() calls
    and the scores as its evaluate(); bf16=True in their TrainingArguments holds inside those runs."""
    import sys

    from gradpilot.task_file import load_task
    from gradpilot.tuning import tune

    task = load_task(_make_trainer_file(tmp_path, bf16=True))
    seen = sys.modules["gradpilot_task_hf_task"].SEEN
    assert task.precision == "bf16"
    result = tune(task, out_dir=tmp_path / "tune", budget=2)
    by = {s.name: s for s in result.stages}
    trials = [t for t in by["lr_search"].evidence.trials if t.scores]
    branches = by["epochs"].evidence.branches
    # each short run: a call to train to each rung and one for its cooldown (after the clock's few timed calls)
    scores = sum(len(t.scores) for t in trials)
    assert len(seen["trains"]) >= 2 * scores + 2 * len(branches) + 3
    # the trunk: a call up to each branch's start, then one through its decay, in that order, to the last step
    assert seen["trains"][-2 * len(branches):] == [x for b in branches for x in (b.start, b.steps)]
    assert seen["evaluations"] == scores + len(branches) + 1  # every score is the trainer's evaluate()
    assert seen["dtypes"] == {torch.bfloat16}  # the trainer's own bf16, inside every run
    assert result.model_path.exists() and math.isfinite(result.metric)
    assert not list((tmp_path / "tune" / "runs" / "search").iterdir())  # no trainer checkpoint left behind


def test_a_short_run_at_the_default_logging_steps_is_diagnosed_from_its_evaluations(tmp_path):
    from gradpilot.diagnosis.logs import read_log

    trainer(tmp_path, 0.05, logging_steps=500, save_strategy="steps", save_steps=60).train()
    history = read_log(tmp_path / "out")  # the Trainer's default logging_steps=500 > 60 steps: eval entries only
    assert len(history.train_loss) == 3 and any("set logging_steps" in w for w in history.warnings)


def test_a_real_trainer_run_whose_loss_ends_above_its_start_is_told_to_lower_the_lr(tmp_path):
    """SGD at lr=3 on the toy task: the logged loss ends far above where it began, while validation wanders.
    Diagnosis must say "too high" with a lower LR, never "too low" (and no percentages of a decrease that did
    not happen)."""
    from gradpilot import diagnose, read_log

    t = trainer(tmp_path, 3.0, steps=120)
    t.train()
    t.save_state()
    d = diagnose(read_log(tmp_path / "out"))
    assert d.lr_verdict == "too high"
    lowered = [f for f in d.findings if f.remedy.get("learning_rate", 9.0) < 3.0]
    assert lowered and not any("learning_rate" in f.remedy and f.remedy["learning_rate"] > 3.0 for f in d.findings)
    assert not any("%" in f.evidence and "e+" in f.evidence for f in d.findings)
    assert all(len(f.evidence) < 400 for f in d.findings)


def test_a_live_probe_measures_the_run_as_it_stands_and_puts_everything_back(tmp_path):
    class ProbeAt10(GradpilotCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            super().on_log(args, state, control, logs=logs, **kwargs)
            if state.global_step == 10 and not self.probes:
                assert not self._measure(args, state, state.global_step, kwargs)  # not validated yet: later
                self._pending = True

    plain = trainer(tmp_path / "plain", 0.05, steps=40)
    plain.train()
    probing = ProbeAt10(probe=True)
    measured = trainer(tmp_path / "probed", 0.05, steps=40, callback=probing)
    measured.train()
    assert len(probing.probes) == 1
    step, found = probing.probes[0]
    assert step == 22 and found.verdict in ("too high", "too low", "about right")  # the first log after validating
    assert found.learning_rate == pytest.approx(0.05) and found.cost_runs > 0
    assert found.cost_runs <= 0.05 or "so short" in found.notes[-1]  # a 40-step run: the minimum branches, said
    after = measured.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in plain.model.state_dict().items())  # training went on untouched


@pytest.mark.slow
def test_a_killed_make_trainer_tune_continues_and_reruns_nothing_finished(tmp_path):
    """Killed right after its second short run (a Trainer.train() call) reported its score: the same command
    again reruns no finished stage or short run, and ends with the plan an unbroken tune gives."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from tests.conftest import KILL_AFTER_RUNS

    source = _make_trainer_file(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-c", "from gradpilot.cli import main; main()", "tune", str(source), "--out",
                str(out), "--budget", "2", "--json"]

    whole = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True, env=env, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "killed"
    killed = subprocess.run(command(out), env={**env, KILL_AFTER_RUNS: "2"}, capture_output=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL
    before = json.loads((out / "tune.json").read_text())["stages"]
    storage = JournalStorage(JournalFileBackend(str(out / "trials.journal")))
    scored = {t.number: dict(t.intermediate_values)
              for t in optuna.load_study(study_name="gradpilot:lr_search", storage=storage).trials}
    assert "lr_search" not in before and sum(bool(v) for v in scored.values()) == 2
    resumed = subprocess.run(command(out), capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = json.loads((out / "tune.json").read_text())
    for name, stage in before.items():
        assert after["stages"][name] == stage  # finished stages are read back, not run again
    storage = JournalStorage(JournalFileBackend(str(out / "trials.journal")))
    for t in optuna.load_study(study_name="gradpilot:lr_search", storage=storage).trials:
        for rung, value in scored.get(t.number, {}).items():
            assert t.intermediate_values[rung] == value  # a score reported before the kill is kept
    assert json.loads(resumed.stdout)["plan"] == json.loads(whole.stdout)["plan"]  # as if never killed


def test_the_trainer_s_accumulation_and_cadence_are_honoured(tmp_path):
    """per_device_train_batch_size=8 with gradient_accumulation_steps=4: the task's batch is 32, tune's runs
    accumulate as the trainer does, and the plan keeps 8 × 4 (the batch stage does not pay on so short a run) —
    so the user's step-based eval and save come as often as they set them."""
    from gradpilot.task_file import load_task
    from gradpilot.tuning import tune

    source = tmp_path / "hf_task.py"
    source.write_text(MAKE_TRAINER.replace("OUT", repr(str(tmp_path / "trainer"))).replace("BF16", "False").replace(
        '"per_device_train_batch_size": 16,', '"per_device_train_batch_size": 8, "gradient_accumulation_steps": 4, '
        '"eval_strategy": "steps", "eval_steps": 6, "save_steps": 12,'))
    task = load_task(source)
    assert task.batch_size == 8 and task.accumulation == 4 and task.batch == 32
    assert task.cadence.steps == {"eval_steps": 6, "save_steps": 12, "logging_steps": 4}
    assert task.cadence.validations == 32 // 6 and task.cadence.saves == 32 // 12  # 2 epochs of 16 steps
    result = tune(task, out_dir=tmp_path / "tune", budget=2)
    assert result.plan["per_device_train_batch_size"] == 8 and result.plan["gradient_accumulation_steps"] == 4
    assert "eval_steps" not in result.plan  # the same batch: the user's cadence means what it meant
