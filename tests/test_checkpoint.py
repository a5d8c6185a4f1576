import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradpilot import GradpilotError, fit
from gradpilot.train import checkpoint as _checkpoint

SCRIPT = Path(__file__).with_name("resume_script.py")
ROOT = Path(__file__).resolve().parent.parent


def run(out: Path, kill: str = "-", *flags: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(SCRIPT), str(out), kill, *flags], env=env, timeout=120).returncode


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    refs = {}
    for flag in ("", "--global-rng"):
        out = tmp_path_factory.mktemp("ref")
        assert run(out, "-", *([flag] if flag else [])) == 0
        refs[flag] = torch.load(out / "final.pt")
        refs[flag]["metrics.csv"] = (out / "ckpt" / "metrics.csv").read_text()
    return refs


# 90 items / batch 8 = 12 batches; 3 per step -> 4 steps per epoch, 16 steps; checkpoints every 2 steps + epochs
@pytest.mark.parametrize(("kill", "flag"), [("7", ""), ("4", ""), ("13", "--global-rng"), ("write:6", ""),
                                            ("1", "")])
@pytest.mark.slow
def test_killed_run_resumes_bit_identical(tmp_path, reference, kill, flag):
    flags = [flag] if flag else []
    assert run(tmp_path, kill, *flags) == 9  # died
    assert not (tmp_path / "final.pt").exists()
    assert run(tmp_path, "-", *flags) == 0  # same arguments again
    got, ref = torch.load(tmp_path / "final.pt"), reference[flag]
    for k, v in ref["params"].items():
        assert torch.equal(v, got["params"][k]), k
    assert got["losses"] == ref["losses"] and got["lrs"] == ref["lrs"] and got["val"] == ref["val"]
    assert got["resumed"] is not None or kill == "1"  # killed before the first checkpoint: starts afresh
    # the metrics log holds each step once, with the same numbers as the uninterrupted run
    assert (tmp_path / "ckpt" / "metrics.csv").read_text() == ref["metrics.csv"]
    assert not list((tmp_path / "ckpt").glob(".last.pt.*"))  # the temporary file a kill left was cleaned


def full_state(**values):
    return {**dict.fromkeys(_checkpoint.LAYOUT, 0), **values}


def test_half_written_checkpoint_is_never_read_back(tmp_path):
    _checkpoint.save(full_state(record=1), tmp_path)
    (tmp_path / ".last.pt.123.tmp").write_bytes(b"half")  # what a crash mid-write leaves behind
    assert _checkpoint.load(tmp_path) == {"format": _checkpoint.FORMAT, **full_state(record=1)}
    _checkpoint.remove_stale_temporaries(tmp_path)  # what the next run does first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_the_layout_is_what_fit_saves_and_a_file_of_another_layout_is_refused(tmp_path):
    tiny_run(tmp_path / "run", epochs=1)
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert set(saved) == _checkpoint.LAYOUT | {"format"}  # what a run saves is what LAYOUT names
    with pytest.raises(AssertionError, match=r"update checkpoint\.LAYOUT and bump FORMAT"):
        _checkpoint.save({**full_state(), "new_key": 1}, tmp_path / "other")  # a loop that saves more fails at once
    old = {k: v for k, v in saved.items() if k != "data"}  # the same FORMAT, one key fewer
    torch.save(old, tmp_path / "run" / "last.pt")
    with pytest.raises(GradpilotError, match="not written by this version of gradpilot: move it away"):
        tiny_run(tmp_path / "run", epochs=1)


def test_unreadable_checkpoint_and_other_settings_are_clear_errors(tmp_path):
    model = nn.Linear(2, 1)
    loader = DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), batch_size=4)
    fit(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), loader, epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(GradpilotError, match="holds a run with other settings"):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), loader, epochs=2, checkpoint_dir=tmp_path)
    (tmp_path / "last.pt").write_bytes(b"garbage")
    with pytest.raises(GradpilotError, match=r"last.pt cannot be read"):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), loader, epochs=1, checkpoint_dir=tmp_path)


def test_finished_run_started_again_does_not_train_more(tmp_path):
    model = nn.Linear(2, 1)
    loader = DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), batch_size=4)
    first = fit(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), loader, epochs=2,
                checkpoint_dir=tmp_path)
    params = [p.clone() for p in model.parameters()]
    again = fit(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), loader, epochs=2,
                checkpoint_dir=tmp_path)
    assert again.steps == first.steps == 4 and again.resumed_from_step == 4
    assert all(torch.equal(p, q) for p, q in zip(params, model.parameters()))


def tiny_run(tmp_path, lr=0.1, x_seed=0, **kwargs):
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    gen = torch.Generator().manual_seed(x_seed)
    loader = DataLoader(TensorDataset(torch.randn(8, 2, generator=gen), torch.randn(8, 1, generator=gen)), batch_size=4)
    return model, fit(model, torch.optim.SGD(model.parameters(), lr=lr), nn.MSELoss(), loader,
                      checkpoint_dir=tmp_path, **{"epochs": 2, **kwargs})


class Payload:
    """Unpickling this runs code: what a checkpoint someone else wrote could do under weights_only=False."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_crafted_to_run_code_on_load_runs_none(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({"format": _checkpoint.FORMAT, "record": Payload(str(marker))}, ckpt / "last.pt")
    with pytest.raises(GradpilotError, match="cannot be read safely") as err:
        tiny_run(ckpt)
    assert not marker.exists() and "\n" not in str(err.value)
    torch.load(ckpt / "last.pt", weights_only=False)  # the absolute reference: loaded unsafely it does run
    assert marker.exists()


def test_checkpoints_are_owner_only_and_never_written_through_a_planted_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in (f".last.pt.{os.getpid()}.tmp", f".last.pt.{os.getpid() + 1}.tmp"):  # names an attacker could guess
        (ckpt / name).symlink_to(victim)
    tiny_run(ckpt)
    assert victim.read_text() == "precious"
    assert (ckpt / "last.pt").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.pt", "metrics.csv"]  # planted links cleaned away


@pytest.mark.parametrize(("change", "message"), [
    ({"lr": 0.01}, r"lr: 0.1 → 0.01"),
    ({"x_seed": 1}, r"train_data: 8 items, \w+ → 8 items, \w+"),
    ({"max_grad_norm": 1.0}, r"max_grad_norm: None → 1.0"),
])
def test_changed_settings_on_resume_are_refused_in_one_line(tmp_path, change, message):
    tiny_run(tmp_path, epochs=1)
    with pytest.raises(GradpilotError, match=message) as err:
        tiny_run(tmp_path, epochs=1, **change)
    assert "\n" not in str(err.value) and "use a new checkpoint_dir" in str(err.value)
    _, again = tiny_run(tmp_path, epochs=1)  # the same settings continue (here: nothing left to do)
    assert again.resumed_from_step == 2


def test_an_early_stopped_run_started_again_trains_no_more(tmp_path):
    from gradpilot import EarlyStopping

    values = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    kwargs = {"epochs": 6, "val_loader": [(torch.zeros(1, 2), torch.zeros(1, 1))], "metric": lambda _o, _y: next(values),
                  "early_stopping": EarlyStopping(patience=2)}
    model, first = tiny_run(tmp_path, **kwargs)
    assert first.epochs_completed == 3 and first.restored_best and "early stopping at epoch 3" in first.stop_reason
    params = [p.clone() for p in model.parameters()]
    model, again = tiny_run(tmp_path, **kwargs)
    assert again.epochs_completed == 3 and again.steps == first.steps == 6 and again.stop_reason == first.stop_reason
    assert all(torch.equal(p, q) for p, q in zip(params, model.parameters()))  # the best weights, as before


def test_fit_writes_a_metrics_log_that_diagnose_reads(tmp_path):
    from gradpilot import read_log
    from gradpilot.examples import example_task

    task = example_task(0)
    result = fit(task, epochs=3, checkpoint_dir=tmp_path / "run")
    history = read_log(tmp_path / "run")  # the run folder, as the README shows
    assert history.source.endswith("metrics.csv")
    assert np.allclose(history.train_loss.values, result.train_losses) and len(history.train_loss) == result.steps
    assert np.allclose(history.val_loss.values, result.val_losses)
    assert list(history.val_loss.steps) == list(result.epoch_steps) and list(history.val_epochs) == [1, 2, 3]
    assert history.metric_name == "val_accuracy" and history.higher_is_better
    assert np.allclose(history.val_metric.values, result.val_metrics) and np.allclose(history.lr.values, result.lrs)


def test_checkpoint_dir_that_cannot_be_written_fails_before_any_training(tmp_path):
    steps = []
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for bad, message in ((a_file, "is a file, not a folder"), (Path("/proc/gradpilot-ckpt"), "not writable")):
        with pytest.raises(GradpilotError, match=message):
            model = nn.Linear(2, 1)
            fit(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(),
                DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), batch_size=4), epochs=1,
                checkpoint_dir=bad, on_step=lambda s, _lr: steps.append(s))
    assert steps == []
