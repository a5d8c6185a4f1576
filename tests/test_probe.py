"""probe: the measured LR verdict from a checkpoint — gradpilot's, a Hugging Face Trainer's, Lightning's."""

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from gradpilot import fit
from gradpilot.errors import GradpilotError
from gradpilot.probing.measure import probe
from gradpilot.train.starts import read_start
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
    with pytest.raises(GradpilotError, match="cannot be read safely"):
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


def test_a_make_trainer_probe_trains_its_branches_in_the_user_s_trainer_from_the_checkpoint_s_state(tmp_path):
    """A Hugging Face run at a hundredth of a good LR, checkpointed; probed through its make_trainer file: every
    branch is a Trainer.train() of the user's trainer (its callback sees them), starting from the checkpoint's
    AdamW state, and every score is its evaluate()."""
    pytest.importorskip("transformers")
    import sys

    from gradpilot.task_file import load_task
    from gradpilot.train.run import Setting
    from tests.test_integrations_transformers import _make_trainer_file

    task = load_task(_make_trainer_file(tmp_path))
    module = sys.modules["gradpilot_task_hf_task"]
    module.make_trainer({"learning_rate": 1e-5, "max_steps": 24, "save_strategy": "steps", "save_steps": 24,
                         "lr_scheduler_type": "constant"}).train()
    folder = tmp_path / "trainer" / "checkpoint-24"
    start = read_start(folder, task.model)
    assert start.lr == pytest.approx(1e-5) and {int(s["step"]) for s in start.optimizer["state"].values()} == {24}
    run = task.runner(task, Setting(3e-5, 16), seed=0, weights=start.weights, optimizer_state=start.optimizer,
                      folder=tmp_path / "one")
    run.advance(2)
    assert run.lrs == pytest.approx([3e-5, 3e-5])  # the run's LR, not the checkpoint's
    assert {int(s["step"]) for s in run.trainer.optimizer.state.values()} == {26}  # went on from step 24
    assert {int(s["step"]) for s in start.optimizer["state"].values()} == {24}  # the checkpoint's state untouched
    seen = module.SEEN
    trains, evaluations = len(seen["trains"]), seen["evaluations"]
    found = probe(dataclasses.replace(task, epochs=8), folder)  # a run of 8 epochs: branches of 5 batches
    branches = len(found.losses)
    assert found.verdict == "too low" and found.suggested_learning_rate > 1e-5
    assert found.cost_runs == pytest.approx(branches * 5 * 16 / (8 * 512)) and found.cost_runs <= 0.1
    assert len(seen["trains"]) - trains == 2 * branches  # a stretch at the constant LR, then its cooldown
    assert seen["evaluations"] - evaluations == branches + 1  # the checkpoint's score and each branch's
    import tempfile
    from pathlib import Path

    assert not list(Path(tempfile.gettempdir()).glob("gradpilot-probe-*"))  # the trainer's checkpoints are gone


def test_a_lightning_make_trainer_probe_fits_its_branches_in_the_user_s_trainer_from_the_momentum_saved(tmp_path):
    pytest.importorskip("lightning.pytorch")
    import sys

    from gradpilot.task_file import load_task
    from gradpilot.train.run import Setting
    from tests.test_integrations_lightning import MAKE_TRAINER

    source = tmp_path / "lit_task.py"
    source.write_text(MAKE_TRAINER.replace("PRECISION", repr("32-true")))
    task = load_task(source)
    module = sys.modules["gradpilot_task_lit_task"]
    trainer, lit, data = module.make_trainer({"learning_rate": 5e-4, "num_train_epochs": 2})  # a hundredth
    trainer.fit(lit, datamodule=data)
    trainer.save_checkpoint(str(tmp_path / "run.ckpt"))
    start = read_start(tmp_path / "run.ckpt", task.model)
    assert start.lr == pytest.approx(5e-4) and all("momentum_buffer" in s for s in start.optimizer["state"].values())
    ends = []
    for state in (start.optimizer, None):
        run = task.runner(task, Setting(5e-3, 32), seed=0, weights=start.weights, optimizer_state=state,
                          folder=tmp_path / f"one-{state is None}")
        run.advance(2)
        assert run.lrs == pytest.approx([5e-3, 5e-3])  # the run's LR, not the checkpoint's
        ends.append(run.weights())
    assert not torch.equal(ends[0]["net.0.weight"], ends[1]["net.0.weight"])  # the saved momentum moved it on
    fits, validations = len(module.SEEN["fits"]), module.SEEN["validations"]
    found = probe(task, tmp_path / "run.ckpt")
    branches = len(found.losses)
    assert found.verdict == "too low" and found.suggested_learning_rate >= 3 * 5e-4
    assert len(module.SEEN["fits"]) - fits == 2 * branches  # a fit() at the constant LR, then one for its cooldown
    assert module.SEEN["validations"] - validations == branches + 1  # each score the trainer's validate()


def test_a_lower_branch_winning_says_too_high_only_with_a_sign_of_it_and_a_higher_one_must_win_clearly():
    from gradpilot.probing.measure import _verdict

    lower_wins = [(1.0, 0.9), (3.0, 0.95), (1 / 3, 0.8)]  # gains from 1.0: ×1 0.1, ×3 0.05, ×⅓ 0.2
    verdict, factor, note = _verdict(1.0, lower_wins, hinted=False)
    assert (verdict, factor) == ("about right", 1.0) and "cooldown's quick gain" in note
    assert _verdict(1.0, lower_wins, hinted=True) == ("too high", 1 / 3, "")
    assert _verdict(1.0, [(1.0, math.nan), (3.0, math.inf), (1 / 3, 0.8)], hinted=False)[:2] == ("too high", 1 / 3)
    assert _verdict(1.0, [(1.0, 0.9), (3.0, 0.7), (1 / 3, 0.95)], hinted=False)[:2] == ("too low", 3.0)  # 0.3 vs 0.1
    assert _verdict(1.0, [(1.0, 0.9), (3.0, 0.87), (1 / 3, 0.95)], hinted=False)[:2] == ("about right", 1.0)  # 0.13


def test_a_plain_torch_save_is_read_with_its_optimizer_state_or_at_the_lr_given(tmp_path):
    task = small_task(0)
    optimizer = task.make_optimizer(3e-3)
    fit(task, optimizer, epochs=1)
    torch.save({"model": task.model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "both.pt")
    start = read_start(tmp_path / "both.pt", task.model)
    assert start.lr == pytest.approx(3e-3) and start.optimizer is not None and start.notes == ()
    torch.save(task.model.state_dict(), tmp_path / "weights.pt")
    alone = read_start(tmp_path / "weights.pt", task.model)
    assert alone.lr is None and alone.optimizer is None and "fresh one" in alone.notes[0]
    with pytest.raises(GradpilotError, match="does not say its learning rate; pass --lr"):
        probe(task, tmp_path / "weights.pt")
    found = probe(task, tmp_path / "weights.pt", learning_rate=3e-3, share=0.05)
    assert found.learning_rate == 3e-3 and any("fresh one" in n for n in found.notes)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(GradpilotError, match="holds a list, not a checkpoint"):
        read_start(tmp_path / "list.pt", task.model)


def test_a_live_probe_rebuilds_the_run_s_optimizer_from_its_class_and_state_whatever_torch_adds():
    """torch 2.13's AdamW keeps settings its constructor does not take back (``decoupled_weight_decay``): the
    probe's optimizers are its class over the same parameters with its state_dict loaded, every setting as the
    run has it, each group's LR at its ratio to the first."""
    from gradpilot.probing.measure import mirror

    model = nn.Sequential(nn.Linear(2, 8), nn.Linear(8, 3))
    run = torch.optim.AdamW([{"params": model[0].parameters(), "lr": 1e-4}, {"params": model[1].parameters()}],
                            lr=1e-3, betas=(0.8, 0.99), weight_decay=0.05)
    made = mirror(run)(model.parameters(), 3e-3)
    assert type(made) is torch.optim.AdamW
    assert [g["lr"] for g in made.param_groups] == pytest.approx([3e-3, 3e-2])  # the first group at the LR asked
    for mine, theirs in zip(made.param_groups, run.param_groups):
        assert {k: v for k, v in mine.items() if k not in ("params", "lr")} == \
            {k: v for k, v in theirs.items() if k not in ("params", "lr")}


def test_a_live_probe_at_an_lr_of_zero_says_so_in_one_line():
    from gradpilot.probing.measure import probe_live

    task = small_task(0)
    optimizer = task.make_optimizer(0.0)
    with pytest.raises(GradpilotError, match="the run's LR is 0") as err:
        probe_live(task, optimizer)
    assert "\n" not in str(err.value)


def test_a_log_and_branches_that_point_opposite_ways_are_unsure_and_the_lr_is_kept(tmp_path, monkeypatch):
    from gradpilot.probing import measure

    assert measure.reconcile("about right", "too high", "the log's words") == ("too high", ("the log's words",))
    verdict, notes = measure.reconcile("too low", "too high", "divergence — the loss rose")
    assert verdict == "unsure" and "divergence" in notes[0] and "opposite (too low)" in notes[0]
    # a run at a far-too-low LR (its branches: "too low", the test above) whose log is taken to say "too high"
    # — as a noisy log did at 1/100 of the best LR in benchmarks/probe.py — is kept at its LR, not sent lower
    task = trained(tmp_path, 1e-5)
    monkeypatch.setattr(measure, "_told_by_log", lambda *_: ("too high", "the run's log decides: noise", 1 / 3))
    found = measure.probe(task, tmp_path / "run")
    assert found.verdict == "unsure" and found.suggested_learning_rate == pytest.approx(found.learning_rate)
    losses = dict(found.losses)
    assert losses[3.0] < losses[1.0]  # what the branches saw is still reported
    assert any("opposite" in n for n in found.notes)
    assert found.to_json()["verdict"] == "unsure"


def test_a_tune_folder_whose_lr_was_lowered_for_the_run_s_length_is_not_told_to_raise_it(tmp_path):
    """tune lowered the plan's LR because every finalist of its search overfit within short runs; the probe's
    branches are shorter still and favour a higher LR the same way: that is said, and the LR is kept. The same
    folder without that evidence in tune.json gets the branches' own verdict (too low) — the absolute reference."""
    from gradpilot.tuning import tune
    from tests.test_tuning_horizon import noisy_regression

    tuned = tune(noisy_regression(), budget=2, out_dir=tmp_path / "tuned")
    assert next(s for s in tuned.stages if s.name == "lr_search").evidence.overtrained is not None
    assert read_start(tmp_path / "tuned", noisy_regression().model).lowered_for_length
    found = probe(noisy_regression(), tmp_path / "tuned")
    assert found.verdict == "unsure" and found.suggested_learning_rate == pytest.approx(tuned.plan["learning_rate"])
    assert any("lowered its LR on purpose" in n for n in found.notes)
    losses = dict(found.losses)
    assert min(losses[3.0], losses.get(9.0, math.inf)) < losses[1.0]  # a higher LR did win the short branches
    record = json.loads((tmp_path / "tuned" / "tune.json").read_text())
    record["stages"]["lr_search"]["evidence"]["value"]["overtrained"] = None
    (tmp_path / "tuned" / "tune.json").write_text(json.dumps(record))
    assert not read_start(tmp_path / "tuned", noisy_regression().model).lowered_for_length
    assert probe(noisy_regression(), tmp_path / "tuned").verdict == "too low"
