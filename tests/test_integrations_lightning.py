"""gradpilot on a real Lightning Trainer: a small LightningModule on the spirals, on CPU."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

pl = pytest.importorskip("lightning.pytorch", reason="lightning is in the test extra")

from gradpilot.errors import GradpilotError  # noqa: E402
from gradpilot.examples import spirals  # noqa: E402
from gradpilot.integrations.lightning import DIAGNOSIS_FILE, GradpilotCallback, find_lr  # noqa: E402
from gradpilot.tuning.state import TuneRecord  # noqa: E402


class Spirals(pl.LightningModule):
    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 3))
        self.steps_seen = 0

    def training_step(self, batch, _batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        self.steps_seen += 1
        return loss

    def validation_step(self, batch, _batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1000)}


class Data(pl.LightningDataModule):
    def setup(self, stage: str) -> None:  # noqa: ARG002 (Lightning passes stage= by name)
        self.train, self.val = spirals(1024, seed=0), spirals(256, seed=1)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=128)


def trainer(tmp_path, callback=None, epochs: int = 4, accumulate: int = 1) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", default_root_dir=str(tmp_path),
                      logger=pl.loggers.CSVLogger(str(tmp_path)), callbacks=[callback] if callback else None,
                      enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                      accumulate_grad_batches=accumulate, log_every_n_steps=5)


def test_find_lr_uses_the_module_s_pieces_and_leaves_its_weights_as_they_were(tmp_path):
    torch.manual_seed(0)
    module = Spirals(0.05)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    result = find_lr(trainer(tmp_path, accumulate=2), module, Data(), num_steps=30)
    assert 1e-4 < result.suggestion < 10 and len(result.lrs) <= 30
    assert module.steps_seen == 2 * len(result.lrs)  # its training_step, the trainer's accumulation
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    with pytest.raises(GradpilotError, match="needs a LightningModule"):
        find_lr(trainer(tmp_path), nn.Linear(2, 3))  # type: ignore[arg-type]


def test_the_callback_stops_training_when_the_stop_file_appears(tmp_path):
    """What ``gradpilot watch --stop-file`` creates from outside the process: training ends at the next step."""
    stop = tmp_path / "STOP"

    class AppearsAtStep40(pl.Callback):  # the watcher's file, created while the run trains
        def on_train_batch_end(self, trainer, *args) -> None:
            del args
            if trainer.global_step == 40:
                stop.write_text("stopped by gradpilot watch\n")

    torch.manual_seed(0)
    module = Spirals(0.05)
    t = trainer(tmp_path, GradpilotCallback(stop_file=stop), epochs=10)
    t.callbacks.append(AppearsAtStep40())
    t.fit(module, datamodule=Data())
    assert 40 <= t.global_step <= 42 and t.global_step < 10 * 32  # stopped, not at its tenth epoch's end
    report = json.loads((Path(t.log_dir) / DIAGNOSIS_FILE).read_text())
    assert any("STOP appeared" in json.dumps(a) for a in report.get("raised", []) + report.get("actions", []))


def test_the_callback_names_the_divergence_a_100x_lr_causes(tmp_path, caplog):
    good, bad = GradpilotCallback(check_every=5), GradpilotCallback(check_every=5)
    torch.manual_seed(0)
    trainer(tmp_path / "good", good).fit(Spirals(0.05), datamodule=Data())
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="gradpilot.train.monitor"):
        run = trainer(tmp_path / "bad", bad)
        run.fit(Spirals(5.0), datamodule=Data())
    report = json.loads((bad.output or tmp_path).read_text())
    assert bad.output is not None and bad.output.parent == Path(run.log_dir) and bad.output.name == DIAGNOSIS_FILE
    kinds = {f["kind"] for f in report["findings"] + report["raised"]}
    assert kinds & {"divergence", "nan"} and report["learning_rate"]["verdict"] in ("too high", "unknown")
    assert report["learning_rate"]["verdict"] == "too high" or "may be too high" in report["learning_rate"]["reason"]
    assert any("gradpilot: " in r.message for r in caplog.records)
    fine = json.loads(good.output.read_text())
    assert not {f["kind"] for f in fine["findings"]} & {"divergence", "nan"}
    assert len(bad.monitor.steps) == 4 * 32 and bad.monitor.val_losses  # one point per optimizer step


def test_autopilot_lowers_the_lr_in_the_trainer_s_optimizer(tmp_path):
    pilot = GradpilotCallback(autopilot=True, check_every=5)
    torch.manual_seed(0)
    run = trainer(tmp_path, pilot)
    run.fit(Spirals(5.0), datamodule=Data())
    assert pilot.monitor.actions and pilot.monitor.actions[0].kind in ("divergence", "nan", "oscillation")
    assert run.optimizers[0].param_groups[0]["lr"] < 5.0
    assert run.lr_scheduler_configs[0].scheduler.base_lrs[0] < 5.0
    assert json.loads(pilot.output.read_text())["actions"]




def test_diagnose_reads_the_newest_version_of_the_folders_lightning_writes(tmp_path):
    """Two runs into one lightning_logs/ (CSVLogger and TensorBoardLogger, a LearningRateMonitor's lr-SGD
    column, train_loss_step/train_loss_epoch), and a data CSV beside it that is not a log."""
    from typer.testing import CliRunner

    from gradpilot.cli import app
    from gradpilot.diagnosis.logs import read_log

    class Logged(Spirals):
        def training_step(self, batch, _batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

    for lr in (0.05, 100.0):  # version_0 trains well, version_1 blows up
        torch.manual_seed(0)
        loggers = [pl.loggers.CSVLogger(str(tmp_path)), pl.loggers.TensorBoardLogger(str(tmp_path / "tb"))]
        pl.Trainer(max_epochs=3, accelerator="cpu", logger=loggers, enable_progress_bar=False,
                   enable_checkpointing=False, enable_model_summary=False, log_every_n_steps=2,
                   callbacks=[pl.callbacks.LearningRateMonitor()]).fit(Logged(lr), datamodule=Data())
    (tmp_path / "data.csv").write_text("x,y\n" + "\n".join(f"{i},{i % 3}" for i in range(50)))
    (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").touch()  # the older run, touched last
    newest = read_log(tmp_path)
    assert "version_1" in newest.source and newest.lr is not None and newest.val_loss is not None
    assert any("2 runs in this folder" in w for w in newest.warnings)
    result = CliRunner().invoke(app, ["diagnose", str(tmp_path / "lightning_logs"), "--json"])
    got = json.loads(result.stdout)
    assert "version_1" in got["source"] and got["learning_rate"]["verdict"] == "too high"
    assert {f["kind"] for f in got["findings"]} & {"divergence", "nan", "oscillation"}
    lowered = [f for f in got["findings"] if "optimizer.lr" in f["remedy"]]  # Lightning's words, not the plan's
    assert lowered and lowered[0]["remedy"]["optimizer.lr"] < 100 and "configure_optimizers" in lowered[0]["advice"]
    assert not any("learning_rate" in f["remedy"] for f in got["findings"])
    every = CliRunner().invoke(app, ["diagnose", str(tmp_path), "--all", "--json"])
    runs = json.loads(every.stdout)
    assert [("version_0" in r["source"], "version_1" in r["source"]) for r in runs] == [(True, False), (False, True)]
    tb = CliRunner().invoke(app, ["diagnose", str(tmp_path / "tb"), "--all", "--json"])
    assert len(json.loads(tb.stdout)) == 2 and every.exit_code == 1
    assert CliRunner().invoke(app, ["diagnose", str(tmp_path), "--all", "--plot", "x.png"]).exit_code == 2


def test_the_callback_reads_validation_under_the_key_given(tmp_path):
    class Renamed(Spirals):
        def validation_step(self, batch, _batch_idx):
            x, y = batch
            self.log("valid/ce", nn.functional.cross_entropy(self.net(x), y))

    watcher = GradpilotCallback(val_key="valid/ce")
    torch.manual_seed(0)
    trainer(tmp_path, watcher, epochs=2).fit(Renamed(0.05), datamodule=Data())
    assert len(watcher.monitor.val_losses) == 2 and all(v > 0 for v in watcher.monitor.val_losses)


MAKE_TRAINER = """
import lightning.pytorch as pl
import torch
from tests.test_integrations_lightning import Data, Spirals

SEEN = {"fits": [], "validations": 0, "dtypes": set()}


class Watch(pl.Callback):  # the user's own callback, on the user's own trainer
    def on_train_start(self, trainer, module):
        SEEN["fits"].append(trainer.global_step)

    def on_validation_end(self, trainer, module):
        SEEN["validations"] += 1


class Recording(Spirals):
    def training_step(self, batch, batch_idx):
        SEEN["dtypes"].add(self.net(batch[0]).dtype)  # what mixed precision the training step ran in
        return super().training_step(batch, batch_idx)


def make_trainer(plan: dict):
    torch.manual_seed(0)
    trainer = pl.Trainer(max_epochs=plan.get("num_train_epochs", 4), accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                         precision=PRECISION, callbacks=[Watch()])
    return trainer, Recording(plan.get("learning_rate", 0.05)), Data()
"""


def test_every_run_of_a_make_trainer_tune_goes_through_the_user_s_lightning_trainer(tmp_path):
    """The user's callback sees each short run, each branch and the trunk's stretches as Trainer.fit() calls and
    the scores as its validate(); precision="bf16-mixed" holds inside those runs."""
    import sys

    from gradpilot.task_file import load_task
    from gradpilot.tuning import tune

    source = tmp_path / "lit_task.py"
    source.write_text(MAKE_TRAINER.replace("PRECISION", repr("bf16-mixed")))
    task = load_task(source)
    seen = sys.modules["gradpilot_task_lit_task"].SEEN
    assert task.precision == "bf16" and task.runner is not None
    result = tune(task, out_dir=tmp_path / "tune", budget=2)
    by = {s.name: s for s in result.stages}
    trials = [t for t in by["lr_search"].evidence.trials if t.scores]
    branches = by["epochs"].evidence.branches
    assert len(seen["fits"]) >= 2 * sum(len(t.scores) for t in trials) + 2 * len(branches)  # every stretch a fit()
    scores = sum(len(t.scores) for t in trials)  # a finalist is scored at each of the two rungs
    assert seen["validations"] == scores + len(branches) + 1  # every score its validate(), and the clock's
    assert seen["dtypes"] == {torch.bfloat16}
    assert result.plan["lr_scheduler_type"] == "warmup_stable_decay" and result.model_path.exists()
    lrs = by["epochs"].evidence.lrs  # the LRs the module's optimizer really took, step by step
    decay = result.plan["lr_scheduler_kwargs"]["num_decay_steps"]
    assert lrs[-decay - 1] == pytest.approx(result.plan["learning_rate"])
    assert lrs[-1] == pytest.approx(result.plan["learning_rate"] / decay)


def test_tune_on_a_make_trainer_file_returning_a_lightning_trainer(tmp_path):
    from typer.testing import CliRunner

    from gradpilot.cli import app

    source = tmp_path / "lit_task.py"
    source.write_text(MAKE_TRAINER.replace("PRECISION", repr("32-true")))
    result = CliRunner().invoke(app, ["tune", str(source), "--out", str(tmp_path / "tune"), "--budget", "2",
                                      "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plan"]
    assert plan["learning_rate"] > 0 and plan["num_train_epochs"] >= 1
    assert json.loads(result.stdout)["spent_item_runs"] <= 2
    record = TuneRecord.read(tmp_path / "tune" / "tune.json")
    assert record.stage("lr_search").evidence.trials and record.stage("lr_range").decision.suggestion > 0
    bad = tmp_path / "bad.py"
    bad.write_text("def make_trainer(plan):\n    return 42\n")
    refused = CliRunner().invoke(app, ["tune", str(bad), "--out", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "make_trainer() returned int" in refused.output


def test_a_live_probe_measures_the_run_as_it_stands_and_puts_everything_back(tmp_path):
    class ProbeAt10(GradpilotCallback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
            if trainer.global_step == 10 and not self.probes:
                self._measure(trainer, module, 10, None)

    torch.manual_seed(0)
    plain_module = Spirals(0.05)
    trainer(tmp_path / "plain", epochs=2).fit(plain_module, datamodule=Data())
    probing = ProbeAt10(probe=True)
    torch.manual_seed(0)
    probed_module = Spirals(0.05)
    trainer(tmp_path / "probed", probing, epochs=2).fit(probed_module, datamodule=Data())
    assert len(probing.probes) == 1
    step, found = probing.probes[0]
    assert step == 10 and found.verdict in ("too high", "too low", "about right")
    assert found.learning_rate == pytest.approx(0.05) and found.cost_runs > 0
    after = probed_module.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in plain_module.state_dict().items())  # training went on untouched


ONE_CYCLE = """
import lightning.pytorch as pl
import torch
from torch import nn
from tests.test_integrations_lightning import Data


class OneCycle(pl.LightningModule):  # Lightning's own recipe: the schedule sized by the trainer's steps
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 3))

    def training_step(self, batch, _i):
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def validation_step(self, batch, _i):
        logits = self.net(batch[0])
        self.log("val_loss", nn.functional.cross_entropy(logits, batch[1]))
        self.log("val_acc", (logits.argmax(-1) == batch[1]).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=3e-3, betas=(0.9, 0.999))
        cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3,
                                                    total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cycle, "interval": "step"}}


def make_trainer(plan: dict):
    torch.manual_seed(0)
    trainer = pl.Trainer(max_epochs=plan.get("num_train_epochs", 3), accelerator="cpu", default_root_dir=ROOT,
                         enable_progress_bar=False, enable_model_summary=False, accumulate_grad_batches=2,
                         callbacks=[pl.callbacks.EarlyStopping("val_loss"),
                                    pl.callbacks.ModelCheckpoint(monitor="val_acc", mode="max")])
    return trainer, OneCycle(), Data()
"""


def test_lightning_s_own_recipes_tune_as_the_user_set_them(tmp_path):
    """OneCycleLR sized by ``estimated_stepping_batches``, a default EarlyStopping("val_loss"), a ModelCheckpoint on
    val_acc and accumulate_grad_batches=2: the task reads the settings as the user built them (before OneCycleLR
    moved them), tune honours the accumulation, scores by val_acc (higher is better), sets EarlyStopping aside
    and says so, and keeps its runs' files in its own folder."""
    from gradpilot.task_file import load_task
    from gradpilot.tuning import tune

    root = tmp_path / "user"
    source = tmp_path / "cycle_task.py"
    source.write_text(ONE_CYCLE.replace("ROOT", repr(str(root))))
    task = load_task(source)
    assert task.lr == 3e-3 and task.make_optimizer(1e-3).param_groups[0]["betas"] == (0.9, 0.999)
    assert task.accumulation == 2 and task.higher_is_better and task.metric_name == "val_acc"
    with pytest.warns(UserWarning, match=r"sets the trainer's EarlyStopping\(monitor='val_loss'\) aside"):
        result = tune(task, out_dir=tmp_path / "tune", budget=2)
    assert result.plan["gradient_accumulation_steps"] == 2 and result.plan["per_device_train_batch_size"] == 32
    assert result.plan["adam_beta1"] == 0.9 and 0 <= result.metric <= 1  # an accuracy, scored as the user scores
    record = TuneRecord.read(tmp_path / "tune" / "tune.json")
    assert record.settings["metric"] == "val_acc" and record.settings["higher_is_better"]
    assert not root.exists() or not list(root.rglob("*.ckpt"))  # no tune run wrote into the user's folders
