import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradpilot import GradpilotError, fit
from gradpilot import _checkpoint

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
    return refs


# 90 items / batch 8 = 12 batches; 3 per step -> 4 steps per epoch, 16 steps; checkpoints every 2 steps + epochs
@pytest.mark.parametrize(("kill", "flag"), [("7", ""), ("4", ""), ("13", "--global-rng"), ("write:6", ""),
                                            ("1", "")])
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


def test_half_written_checkpoint_is_never_read_back(tmp_path):
    _checkpoint.save({"step": 1}, tmp_path)
    (tmp_path / ".last.pt.123.tmp").write_bytes(b"half")  # what a crash mid-write leaves behind
    assert _checkpoint.load(tmp_path) == {"format": _checkpoint.FORMAT, "step": 1}
    _checkpoint.remove_stale_temporaries(tmp_path)  # what the next run does first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


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
