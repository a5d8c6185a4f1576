import json

import numpy as np
import pytest

from gradpilot import GradpilotError, diagnose, read_log
from gradpilot.diagnosis.logs import classify

LOSS = [2.3 * np.exp(-s / 30) + 0.2 for s in range(120)]


def test_column_names_as_users_write_them():
    expected = {
        "loss": "train_loss", "train_loss": "train_loss", "train/loss": "train_loss", "Loss/train": "train_loss",
        "train_loss_step": "train_loss", "train_loss_epoch": "train_loss_epoch", "eval_loss": "val_loss",
        "val/loss": "val_loss", "val_loss": "val_loss", "Loss/val": "val_loss", "lr-Adam": "lr", "lr-AdamW/pg1": "lr",
        "learning_rate": "lr", "train/learning_rate": "lr", "lr": "lr", "step": "step", "global_step": "step",
        "train/global_step": "step", "epoch": "epoch", "val_acc": "val_metric", "eval_accuracy": "val_metric",
        "eval_runtime": None, "grad_norm": None, "total_flos": None,
    }
    assert {name: classify(name) for name in expected} == expected


def test_lightning_csv_logger_layout_with_sparse_rows(tmp_path):
    folder = tmp_path / "lightning_logs" / "version_0"
    folder.mkdir(parents=True)
    (folder / "hparams.yaml").write_text("lr: 0.001\n")
    rows = ["epoch,step,train_loss_step,lr-Adam,val_loss,val_acc,train_loss_epoch"]
    for s, loss in enumerate(LOSS):
        rows.append(f"{s // 40},{s},{loss},0.001,,,")
        if s % 40 == 39:
            rows.append(f"{s // 40},{s},,,{0.5 + 0.01 * s // 40},{0.8},{loss}")
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")
    h = read_log(folder)  # the run's folder, as users point at it
    assert len(h.train_loss) == 120 and h.train_loss.values[0] == pytest.approx(2.5)
    assert list(h.val_loss.steps) == [39, 79, 119] and h.metric_name == "val_acc" and h.higher_is_better
    assert set(h.lr.values) == {0.001}


def test_plain_csv_and_jsonl(tmp_path):
    csv = tmp_path / "run.csv"
    csv.write_text("step,train_loss,val_loss,lr\n" + "".join(f"{s},{l},{'' if s % 30 else 0.4},0.01\n"
                                                           for s, l in enumerate(LOSS)))
    jsonl = tmp_path / "run.jsonl"
    jsonl.write_text("".join(json.dumps({"step": s, "loss": l, "learning_rate": 0.01}) + "\n" for s, l in enumerate(LOSS)))
    for path in (csv, jsonl):
        h = read_log(path)
        assert len(h.train_loss) == 120 and h.lr is not None and h.source == str(path)
    assert len(read_log(csv).val_loss) == 4


def test_tensorboard_event_files_written_by_the_real_writer(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path / "runs" / "exp"))
    for s, loss in enumerate(LOSS):
        writer.add_scalar("train/loss", loss, s)
        writer.add_scalar("train/learning_rate", 1e-3, s)
        if s % 40 == 39:
            writer.add_scalar("eval/loss", 0.5, s)
    writer.close()
    h = read_log(tmp_path / "runs")  # a log dir with the events one level down
    assert len(h.train_loss) == 120 and h.train_loss.values[5] == pytest.approx(LOSS[5], rel=1e-6)
    assert len(h.val_loss) == 3 and h.lr.values[0] == pytest.approx(1e-3)


def trainer_state(path, history):
    path.write_text(json.dumps({"best_metric": None, "epoch": 3.0, "global_step": 120, "log_history": history,
                                "max_steps": 120, "num_train_epochs": 3, "total_flos": 1.0, "trial_name": None}))


def test_trainer_state_json_of_the_documented_shape(tmp_path):
    history = []
    for s, loss in enumerate(LOSS, start=1):
        if s % 5 == 0:
            history.append({"epoch": s / 40, "grad_norm": 1.3, "learning_rate": 5e-5, "loss": loss, "step": s})
        if s % 40 == 0:
            history.append({"epoch": s / 40, "eval_loss": 0.4, "eval_accuracy": 0.9, "eval_runtime": 1.2,
                            "eval_samples_per_second": 100.0, "step": s})
    history.append({"epoch": 3.0, "step": 120, "total_flos": 1.0, "train_loss": 9.9, "train_runtime": 30.0,
                    "train_samples_per_second": 10.0})
    folder = tmp_path / "checkpoint-120"
    folder.mkdir()
    trainer_state(folder / "trainer_state.json", history)
    h = read_log(folder)
    assert len(h.train_loss) == 24 and 9.9 not in h.train_loss.values  # the run summary is not a step
    assert len(h.val_loss) == 3 and h.metric_name == "eval_accuracy" and h.lr.values[0] == 5e-5
    d = diagnose(h)  # the loss fell exponentially to its floor at a constant LR, validation flat: a healthy run
    assert d.kinds == {"healthy"} and d.lr_verdict == "about right"


def test_a_nan_the_trainer_logged_as_zero_is_read_as_nan(tmp_path):
    """HF's logging_nan_inf_filter logs loss 0.0 once the loss is NaN; its grad_norm stays NaN."""
    history = [{"step": s, "loss": 1.0 - s / 100, "grad_norm": 1.0, "learning_rate": 1e-3} for s in range(1, 21)]
    history += [{"step": s, "loss": 0.0, "grad_norm": float("nan"), "learning_rate": 1e-3} for s in range(21, 31)]
    history.append({"step": 31, "loss": 0.0, "grad_norm": 0.5, "learning_rate": 1e-3})  # a real 0.0 stays
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps({"log_history": history}))
    h = read_log(path)
    assert np.isnan(h.train_loss.values[20:30]).all() and h.train_loss.values[30] == 0.0
    assert h.train_loss.values[5] == pytest.approx(0.94)


def test_ragged_rows_are_read_by_position_with_a_warning(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("step,loss,lr\n1,2.0,0.1\n2,1.9\n3,1.8,0.1,extra\n4,1.7,0.1\n")
    h = read_log(path)
    assert list(h.train_loss.values) == [2.0, 1.9, 1.8, 1.7] and list(h.lr.steps) == [1, 3, 4]
    assert any("2 rows have another number of fields" in w for w in h.warnings)


def test_a_file_whose_step_goes_back_holds_several_runs_and_the_last_is_read(tmp_path):
    path = tmp_path / "metrics.jsonl"
    first = [{"step": s, "loss": 5.0 - 0.1 * s} for s in range(1, 11)]
    second = [{"step": s, "loss": 1.0 - 0.01 * s} for s in range(1, 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in first + second))
    h = read_log(path)
    assert list(h.train_loss.steps) == [1, 2, 3, 4, 5] and h.train_loss.values[0] == pytest.approx(0.99)
    assert any("2 runs appended" in w for w in h.warnings)


def test_json_lines_are_recognised_by_content_whatever_the_name(tmp_path):
    for name in ("log.txt", "metrics.json"):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"epoch": e, "train_loss": 1.0 / (e + 1)}) + "\n" for e in range(10)))
        assert len(read_log(path).train_loss) == 10


def test_the_whole_loss_is_read_before_its_components(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"iteration": i, "loss_box_reg": 0.5, "loss_cls": 1.0 + i, "total_loss": 3.0 - i})
                            + "\n" for i in range(3)))
    assert list(read_log(path).train_loss.values) == [3.0, 2.0, 1.0]


def test_a_keras_tensorboard_run_is_its_train_and_validation_folders_read_as_one(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for part, offset in (("train", 0.0), ("validation", 0.5)):
        with SummaryWriter(str(tmp_path / part)) as w:
            for epoch in range(6):
                w.add_scalar("epoch_loss", 2.0 / (epoch + 1) + offset, epoch)
    h = read_log(tmp_path)
    assert h.source == str(tmp_path) and len(h.train_loss) == 6 and h.val_loss is not None
    assert h.val_loss.values[0] == pytest.approx(2.5) and h.tool == "keras"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "", "is empty"),
        ("bad.csv", "step,loss\n1,2.0\n2,oops\n", r"bad.csv:3: 'loss' is 'oops', not a number"),
        ("bad.jsonl", '{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.9}\n', r"bad.jsonl:2: not valid JSON"),
        ("list.jsonl", "[1, 2]\n", r"list.jsonl:1: expected a JSON object"),
        ("trainer_state.json", '{"log_history": [\n  {"loss": 2.0, "step": 1},\n  {"loss"', r"trainer_state.json:\d+: not valid JSON"),
        ("other.json", '{"something": 1}', "no 'log_history' list"),
        ("noloss.csv", "step,accuracy\n1,0.5\n", "no training-loss column"),
        ("run.txt", "hello", "unknown log format"),
    ],
)
def test_corrupt_empty_or_truncated_logs_name_the_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(GradpilotError, match=message) as err:
        read_log(path)
    assert "\n" not in str(err.value) and name in str(err.value)


def test_truncated_tensorboard_file_and_missing_paths(tmp_path):
    (tmp_path / "events.out.tfevents.1.host").write_bytes(b"\x00\x01\x02truncated")
    with pytest.raises(GradpilotError, match=r"no scalars|cannot be read"):
        read_log(tmp_path)
    with pytest.raises(GradpilotError, match="does not exist"):
        read_log(tmp_path / "nope.csv")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(GradpilotError, match="holds no log"):
        read_log(tmp_path / "empty_dir")


def test_ordinary_damage_is_one_error_or_a_warning_never_a_crash(tmp_path):
    cases = {
        "latin1.csv": b"step,loss\n1,2.0\n2,1.9\n" + b"3,\xff\xfe\n",
        "nested.jsonl": b'{"step": 1, "loss": ' + b"[" * 100_000 + b"\n",
        "bigint.jsonl": b'{"step": 1, "loss": ' + b"9" * 5000 + b"}\n",
        "bigfield.csv": b"step,loss\n1," + b"1" * 200_000 + b"\n",
        "state.json": b'{"log_history": ' + b"[" * 100_000,
    }
    messages = {"latin1.csv": r"latin1.csv:4: 'loss' holds bytes that are not UTF-8 text",
                "nested.jsonl": "nested too deeply", "bigint.jsonl": "not a log value",
                "bigfield.csv": "not a readable CSV line", "state.json": "nested too deeply"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(GradpilotError, match=messages[name]) as err:
            read_log(tmp_path / name)
        assert "\n" not in str(err.value)


def test_huge_numbers_read_as_infinity_and_the_run_as_diverged(tmp_path):
    path = tmp_path / "run.jsonl"
    rows = [{"step": s, "loss": 2.0 - 0.01 * s} for s in range(40)] + [{"step": 40, "loss": 10**400}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    h = read_log(path)
    assert h.train_loss.values[-1] == float("inf") and "nan" in diagnose(h).kinds


def test_a_truncated_tensorboard_file_is_read_with_a_warning(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    for s, loss in enumerate(LOSS):
        writer.add_scalar("train/loss", loss, s)
    writer.close()
    event = next(tmp_path.glob("events.out.tfevents*"))
    whole = read_log(tmp_path)
    assert whole.warnings == ()
    event.write_bytes(event.read_bytes()[:-30])  # a kill mid-record
    cut = read_log(tmp_path)
    assert len(cut.train_loss) < len(whole.train_loss) and "truncated after" in cut.warnings[0]


def test_folders_are_never_left_through_a_symlink(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "metrics.csv").write_text("step,loss\n" + "".join(f"{s},{l}\n" for s, l in enumerate(LOSS)))
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    (run / "sub" / "metrics.csv").symlink_to(outside / "metrics.csv")
    (run / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(GradpilotError, match="holds no log"):
        read_log(run)
    inside = run / "own.csv"
    inside.write_text("step,loss\n1,2.0\n")
    (run / "sub" / "alias.csv").symlink_to(inside)  # a link that stays inside is fine
    assert read_log(run).source == str(inside)


@pytest.mark.slow
def test_memory_grows_with_the_columns_read_not_with_the_file(tmp_path):
    import tracemalloc

    path = tmp_path / "big.csv"
    n = 200_000
    with open(path, "w") as f:
        f.write("step,epoch,train_loss,lr,val_loss,note\n")
        for s in range(n):
            f.write(f"{s},{s // 1000},{2.0 * 0.99999 ** s:.6f},0.001,,some text that is not read\n")
    size = path.stat().st_size
    tracemalloc.start()
    h = read_log(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(h.train_loss) == n
    assert peak < 3 * size, f"peak {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB file"


def test_a_nan_the_trainer_logged_as_zero_in_tensorboard_is_read_as_nan(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    for s in range(1, 31):
        hidden = s > 20
        writer.add_scalar("train/loss", 0.0 if hidden else 1.0 - s / 100, s)
        writer.add_scalar("train/grad_norm", float("nan") if hidden else 1.0, s)
    writer.close()
    h = read_log(tmp_path)
    assert np.isnan(h.train_loss.values[20:]).all() and not np.isnan(h.train_loss.values[:20]).any()
    assert h.tool == "transformers" and "nan" in diagnose(h).kinds


def test_keras_csvlogger_s_default_training_log(tmp_path):
    """Keras's documented CSVLogger('training.log'): epoch first, then the metrics sorted by name."""
    rows = "".join(f"{e},{0.5 + e * 0.04:.4f},{1.0 - e * 0.08:.4f},{0.5 + e * 0.03:.4f},{1.05 - e * 0.07:.4f}\n"
                   for e in range(10))
    (tmp_path / "training.log").write_text("epoch,accuracy,loss,val_accuracy,val_loss\n" + rows)
    (tmp_path / "notes.log").write_text("started training\n")  # a plain log beside it is not read
    h = read_log(tmp_path)
    assert h.source.endswith("training.log") and len(h.train_loss) == 10 and len(h.val_loss) == 10
    assert h.tool == "keras"
    with pytest.raises(GradpilotError, match="unknown log format"):
        read_log(tmp_path / "notes.log")


def test_hidden_nan_is_the_trainer_s_zero_over_a_nan_norm_only():
    from gradpilot.diagnosis.logs import hidden_nan

    assert hidden_nan(0.0, float("nan")) and hidden_nan(0.0, float("inf")) and hidden_nan(0.0, "nan")
    assert not hidden_nan(0.0, 1.3)  # a loss of exactly zero with a finite norm is a real zero
    assert not hidden_nan(2.5, float("nan"))  # a real loss beside a skipped fp16 step
    assert not hidden_nan(0.0, None) and not hidden_nan(None, float("nan"))
