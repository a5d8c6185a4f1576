"""The traps a new user fell into: advice that would plainly hurt. A metric's direction never guessed, a NaN from
the first row never blamed on the LR, never opposite LR remedies in one report, a validation loss that worsens
from its low never "healthy", and a path given to ``diagnose`` answered in one line."""

import json
import math

import numpy as np
import pytest

from gradpilot import diagnose, read_log
from gradpilot.cli.logs import run as cli
from gradpilot.diagnosis.history import History, Series
from gradpilot.errors import GradpilotError
from tests.conftest import synthetic


def mse_csv(path, name="val_metric", with_loss=True):
    """60 epochs of a regression whose validation MSE (logged as ``name``) is best at epoch 20 and worst at 60."""
    rows = ["epoch,train_loss" + (",val_loss" if with_loss else "") + f",{name}"]
    for e in range(1, 61):
        train = 1.0 * math.exp(-e / 10) + 0.05
        val = 0.3 + 0.002 * (e - 20) ** 2 / 4 + (0.3 * math.exp(-e / 6))
        rows.append(f"{e},{train:.5f}" + (f",{val:.5f}" if with_loss else "") + f",{val * 2.1:.5f}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_an_mse_named_val_metric_is_read_by_moving_with_the_loss_and_said_first(tmp_path):
    history = read_log(mse_csv(tmp_path / "m.csv"))
    assert history.metric_direction == "loss" and history.higher_is_better is False
    d = diagnose(history)
    assert d.assumed and "val_metric" in d.assumed[0] and "lower" in d.assumed[0]
    said = " ".join(f.advice + f.evidence for f in d.findings)
    assert "epoch 60" not in said  # its worst epoch is never offered as its best
    best = int(np.argmin(history.val_metric.values)) + 1
    assert 15 <= best <= 25


def test_a_metric_whose_direction_nothing_tells_is_never_used_to_pick_a_checkpoint(tmp_path):
    history = read_log(mse_csv(tmp_path / "m.csv", with_loss=False))
    assert history.metric_direction == "unknown" and not history.direction_known
    d = diagnose(history)
    assert d.assumed and "--higher-is-better" in d.assumed[0] and "--lower-is-better" in d.assumed[0]
    assert not any("val_metric" in f.advice for f in d.findings)  # no "choose the checkpoint by val_metric"


def test_the_user_says_which_way_the_metric_goes(tmp_path, capsys):
    path = mse_csv(tmp_path / "m.csv", with_loss=False)
    assert cli(["diagnose", str(path), "--lower-is-better", "--json"]) in (0, 1)
    out = json.loads(capsys.readouterr().out)
    assert any("given" in a or "lower" in a for a in out["assumed"])
    directed = read_log(path).directed(False)
    assert directed.direction_known and directed.higher_is_better is False
    assert cli(["diagnose", str(path), "--lower-is-better", "--higher-is-better"]) == 2  # one or the other


@pytest.mark.parametrize("name", ["val_accuracy", "eval_f1", "val_rmse", "eval_wer"])
def test_an_unambiguous_name_is_read_as_its_direction(tmp_path, name):
    history = read_log(mse_csv(tmp_path / "m.csv", name=name, with_loss=False))
    assert history.metric_direction == "name"
    assert history.higher_is_better is (name.split("_")[1] in ("accuracy", "f1"))


def test_a_loss_nan_from_its_first_row_is_the_data_or_the_loss_never_the_lr(tmp_path):
    d = diagnose(synthetic(np.full(40, np.nan)))
    (nan,) = d.findings
    assert nan.kind == "nan" and "learning_rate" not in nan.remedy and d.lr_verdict != "too high"
    assert any(w in nan.advice.lower() for w in ("data", "loss", "model"))
    path = tmp_path / "nan.csv"
    path.write_text("step,loss,lr\n" + "".join(f"{s},nan,0.001\n" for s in range(1, 30)))
    assert cli(["diagnose", str(path)]) == 1  # a sure problem all the same


def test_a_nan_after_finite_steps_is_still_the_lr_s():
    loss = np.concatenate([np.linspace(2.0, 1.0, 30), np.full(10, np.nan)])
    d = diagnose(synthetic(loss))
    assert "nan" in d.kinds and d.lr_verdict == "too high"


def test_a_loss_at_chance_with_big_swings_never_gets_opposite_lr_remedies():
    """SGD + momentum at lr 1.0: the loss sits at chance (plateau: raise?) and swings (oscillation: lower?)."""
    rng = np.random.default_rng(0)
    loss = np.log(10) + 0.05 * rng.standard_normal(600)
    loss[rng.choice(600, 40, replace=False)] += rng.uniform(2, 8, 40)
    d = diagnose(synthetic(loss, lr=1.0))
    assert d.findings
    ways = {f.lr for f in d.findings if f.lr is not None}
    moves = {"raise" if f.remedy["learning_rate"] > 1.0 else "lower" for f in d.findings if "learning_rate" in f.remedy}
    assert len(ways | moves) <= 1, [f.advice for f in d.findings]
    said = " ".join(f.advice.lower() for f in d.findings)
    assert not ("raise" in said and "lower" in said and "both ways" not in said)


def test_a_validation_loss_far_above_its_low_is_never_healthy_even_while_training_falls():
    steps = np.arange(1.0, 401)
    train = 2 * np.exp(-steps / 100) + 0.1
    at = np.arange(40.0, 401, 40)
    val = np.array([1.0, 0.7, 0.55, 0.5, 0.52, 0.62, 0.75, 0.86, 0.98, 1.1])  # low at 4/10, ends 2.2× it
    d = diagnose(History(Series(steps, train), val_loss=Series(at, val)))
    assert "healthy" not in d.kinds and "overfitting" in d.kinds
    finding = next(f for f in d.findings if f.kind == "overfitting")
    assert finding.start == 160 and "lowest" in finding.advice


def test_a_validation_loss_rising_from_its_first_evaluation_while_the_lr_warms_up_hints_at_a_lower_peak():
    steps = np.arange(1.0, 301)
    train = 3.0 - 0.5 * steps / 300  # the training loss still falls a little
    at = np.arange(30.0, 301, 30)
    val = np.linspace(1.0, 1.25, 10)  # up from its first evaluation on
    lr = Series(steps, np.minimum(3e-3, 3e-3 * steps / 250))  # a warmup to 3e-3
    d = diagnose(History(Series(steps, train), val_loss=Series(at, val), lr=lr))
    assert "healthy" not in d.kinds
    finding = next(f for f in d.findings if f.kind == "overfitting")
    assert finding.lr == "lower" and "warm" in finding.advice and d.lr_verdict != "about right"
    assert "lower peak LR" in d.lr_reason or "too high" in d.lr_reason


def test_diagnose_given_a_path_says_what_to_call(tmp_path):
    with pytest.raises(GradpilotError, match="read_log"):
        diagnose(str(tmp_path / "metrics.csv"))  # type: ignore[arg-type]
    with pytest.raises(GradpilotError, match="read_log"):
        diagnose(tmp_path)  # type: ignore[arg-type]

