"""probe: the measured LR verdict from a checkpoint — gradpilot's, a Hugging Face Trainer's, Lightning's."""

import json

import pytest
import torch
from torch import nn

from gradpilot import fit
from gradpilot._checkpoint_formats import read_start
from gradpilot.errors import GradpilotError
from gradpilot.probing import probe
from tests.conftest import small_task


def trained(tmp_path, lr, optimizer="adamw"):
    task = small_task(0, n=2048, epochs=4, optimizer=optimizer)
    torch.manual_seed(0)
    fit(task, task.make_optimizer(lr), epochs=2, checkpoint_dir=tmp_path / "run")
    return task


def test_a_run_at_an_lr_far_too_low_is_told_to_raise_it_at_a_tenth_of_a_run(tmp_path):
    task = trained(tmp_path, 1e-5)
    found = probe(task, tmp_path / "run")
    assert found.verdict == "too low" and found.learning_rate == pytest.approx(1e-5)
    losses = dict(found.losses)
    assert losses[3.0] < losses[1.0] < losses[1 / 3]  # the larger the LR, the lower the loss: what "too low" means
    best = min(losses, key=losses.get)
    assert best >= 9 and found.suggested_learning_rate == pytest.approx(1e-5 * best)  # it walked on upwards
    assert 0 < found.cost_runs <= 0.1 and 4 <= len(found.losses) <= 5
    out = found.to_json()
    assert out["verdict"] == "too low" and out["suggested_learning_rate"] == pytest.approx(1e-5 * best)
    assert [b["factor"] for b in out["branches"]] == sorted(losses) and json.dumps(out)


def test_a_run_at_an_lr_far_too_high_is_told_to_lower_it(tmp_path):
    task = trained(tmp_path, 0.5, optimizer="sgd")
    found = probe(task, tmp_path / "run" / "last.pt")
    assert found.verdict in ("too high", "about right") and found.suggested_learning_rate <= 0.5


def test_the_task_s_model_is_left_as_the_checkpoint_saved_it(tmp_path):
    task = trained(tmp_path, 1e-3)
    probe(task, tmp_path / "run")
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(v, task.model.state_dict()[k]) for k, v in saved.items())


def test_a_checkpoint_of_another_model_is_refused_in_one_line(tmp_path):
    trained(tmp_path, 1e-3)
    other = small_task(0)
    other = type(other)(**{**other.__dict__, "model": nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))})
    with pytest.raises(GradpilotError, match="does not match the task's model") as err:
        probe(other, tmp_path / "run")
    assert "\n" not in str(err.value)
    with pytest.raises(GradpilotError, match="not a checkpoint gradpilot reads"):
        read_start(tmp_path / "run" / "metrics.csv", other.model)


def test_a_lightning_checkpoint_is_read_with_its_module_s_prefix_taken_off(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from tests.test_integrations_lightning import Data, Spirals

    module = Spirals(0.05)
    pl.Trainer(max_epochs=1, accelerator="cpu", default_root_dir=str(tmp_path), logger=False,
               enable_progress_bar=False, enable_model_summary=False).fit(module, datamodule=Data())
    ckpt = next(tmp_path.rglob("*.ckpt"))
    task = small_task(0, n=1024, epochs=4, optimizer="sgd")
    start = read_start(ckpt, task.model)
    assert start.lr == pytest.approx(0.05) and start.optimizer is not None
    assert all(torch.equal(v, module.net.state_dict()[k]) for k, v in start.weights.items())
    found = probe(task, ckpt)
    assert found.learning_rate == pytest.approx(0.05) and found.verdict in ("too high", "too low", "about right")


def test_a_hugging_face_checkpoint_folder_is_read_with_its_logged_lr(tmp_path):
    pytest.importorskip("transformers")
    from transformers import BertForSequenceClassification

    from gradpilot import Task
    from tests.test_integrations_transformers import Toy, trainer

    t = trainer(tmp_path, 0.05, steps=20, save_strategy="steps", save_steps=20)
    t.train()
    folder = next((tmp_path / "out").glob("checkpoint-*"))
    model = BertForSequenceClassification(t.model.config)
    task = Task(model=model, train_data=Toy(512, 0), val_data=Toy(128, 1), loss_fn=None,
                step_fn=lambda m, b: m(**b).loss, optimizer="sgd", batch_size=16, epochs=10)
    start = read_start(folder, model)
    assert start.lr == pytest.approx(0.05)
    assert all(torch.equal(v, t.model.state_dict()[k].cpu()) for k, v in start.weights.items())
    found = probe(task, folder)
    assert found.learning_rate == pytest.approx(0.05) and found.cost_runs <= 0.1 and not found.notes
    short = probe(type(task)(**{**task.__dict__, "epochs": 1}), folder)
    assert short.cost_runs > 0.1 and "so short" in short.notes[0]  # the minimum branch, said


def test_the_command_prints_the_verdict_as_json(tmp_path):
    from typer.testing import CliRunner

    from gradpilot.cli import app

    task_file = tmp_path / "task.py"
    task_file.write_text(
        "import torch\nfrom tests.conftest import small_task\n\n"
        "def task(seed: int = 0):\n    return small_task(seed, n=2048, epochs=4)\n")
    trained(tmp_path, 1e-5)
    result = CliRunner().invoke(app, ["probe", str(task_file), "--checkpoint", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["verdict"] == "too low" and out["learning_rate"] == pytest.approx(1e-5)
    assert out["suggested_learning_rate"] > out["learning_rate"] and out["cost_runs"] <= 0.1
    missing = CliRunner().invoke(app, ["probe", str(task_file), "--checkpoint", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
