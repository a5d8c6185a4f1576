import json
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from gradpilot.cli import app
from tests.conftest import TASK_FILE, one_line_error, write

runner = CliRunner()


def test_find_lr_on_the_builtin_example_prints_the_suggestion_and_writes_the_plot(tmp_path):
    png = tmp_path / "curve.png"
    result = runner.invoke(app, ["find-lr", "--num-steps", "30", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "Suggested learning rate" in result.output and "the curve supports" in result.output
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_find_lr_on_a_task_file_as_json(tmp_path):
    path = write(tmp_path, TASK_FILE)
    args = ["find-lr", str(path), "--json", "--seed", "2", "--start-lr", "1e-5", "--end-lr", "1",
            "--num-steps", "20", "--accumulation-steps", "2", "--rule", "steepest", "--plot", str(tmp_path / "c.png")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["task"] == "file-task-2"
    assert out["rule"] == "steepest" and out["suggestion"] == out["alternatives"]["steepest"]
    assert 1e-5 <= out["suggestion"] <= 1
    assert out["steps"] <= 20
    low, high = out["interval"]
    assert low <= out["suggestion"] <= high and 0 <= out["confidence"] <= 1 and out["edge"] > 0
    assert isinstance(out["caveat"], str)


def test_task_file_without_task_is_a_one_line_error(tmp_path):
    path = write(tmp_path, "x = 1\n")
    result = runner.invoke(app, ["find-lr", str(path)])
    assert result.exit_code == 2
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and "defines no task() function" in lines[0]
    assert "Traceback" not in result.output


def test_bad_sweep_bounds_are_a_one_line_error():
    result = runner.invoke(app, ["find-lr", "--start-lr", "1", "--end-lr", "0.1"])
    assert result.exit_code == 2
    assert "start_lr must be below end_lr" in result.output


def test_plan_prints_the_table_and_json():
    result = runner.invoke(app, ["plan", "--lr", "3e-5", "--batch-size", "16", "--optimizer", "adamw",
                                 "--target", "64", "--max-micro-batch", "16"])
    assert result.exit_code == 0, result.output
    assert "6e-05" in result.output and "sqrt" in result.output
    result = runner.invoke(app, ["plan", "--lr", "0.1", "--batch-size", "256", "--optimizer", "sgd", "--target", "1024",
                                 "--max-micro-batch", "96", "--world-size", "2", "--total-steps", "5000",
                                 "--rule", "auto", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["micro_batch_size"], out["accumulation_steps"], out["world_size"]) == (64, 8, 2)
    assert out["lr"] == 0.4 and out["lr_rule"] == "linear" and out["warmup_steps"] > 0


def test_plan_without_target_uses_the_whole_micro_batch_and_errors_are_one_line():
    result = runner.invoke(app, ["plan", "--max-micro-batch", "48", "--world-size", "2", "--json"])
    assert json.loads(result.stdout)["effective_batch_size"] == 96
    result = runner.invoke(app, ["plan", "--target", "64"])
    assert result.exit_code == 2 and "give --max-micro-batch" in result.output
    result = runner.invoke(app, ["plan", "--max-micro-batch", "8", "--lr", "1e-3", "--batch-size", "8", "--rule", "cube"])
    assert result.exit_code == 2 and "unknown --rule 'cube'" in result.output  # the flag's name


def test_find_batch_size_on_a_task_file(tmp_path):
    path = write(tmp_path, TASK_FILE)
    result = runner.invoke(app, ["find-batch-size", str(path), "--max-batch-size", "40", "--start", "5", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "Largest micro-batch that fits: 40" in result.output
    assert "Gradient noise scale" in result.output


def test_find_batch_size_memory_budget_and_no_noise_scale():
    result = runner.invoke(app, ["find-batch-size", "--max-memory-mib", "2", "--no-noise-scale"])
    assert result.exit_code == 0, result.output
    assert "Largest micro-batch that fits" in result.output and "noise scale" not in result.output


def test_find_batch_size_on_cpu_without_a_limit_stops_at_the_dataset_and_says_so():
    result = runner.invoke(app, ["find-batch-size", "--no-noise-scale"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Largest micro-batch that fits: 2048" in text  # the example's 2,048 training items
    assert "the dataset's size, 2048 items" in text and "half the available memory" in text


def test_schedule_prints_and_plots_the_curve(tmp_path):
    png = tmp_path / "s.png"
    result = runner.invoke(app, ["schedule", "warmup_cosine", "--steps", "100", "--lr", "0.01", "--option",
                                 "warmup_steps=10", "--option", "eta_min=1e-4", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "0.001" in result.output and "0.0001" in result.output  # first warmup step and the floor
    assert png.read_bytes()[:4] == b"\x89PNG"
    result = runner.invoke(app, ["schedule", "plateau", "--steps", "4", "--steps-per-epoch", "2", "--metrics", "1,1",
                                 "--option", "patience=0", "--plot", str(png)])
    assert result.exit_code == 0, result.output


def test_schedule_errors_are_one_line():
    for args, message in ((["schedule", "cosinus", "--steps", "10"], "unknown scheduler 'cosinus'"),
                          (["schedule", "cosine", "--steps", "10", "--option", "eta_min"], "KEY=VALUE"),
                          (["schedule", "cosine", "--steps", "10", "--option", "eta_min=low"], "needs a number"),
                          (["schedule", "plateau", "--steps", "10"], "one metric per epoch")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)


def test_version_and_help_show_flags_as_flags():
    from gradpilot import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"gradpilot {__version__}"
    for command in ("find-lr", "diagnose", "plan", "find-batch-size", "schedule"):
        help_text = runner.invoke(app, [command, "--help"]).output
        assert ("<bool>" not in help_text and "--json" in help_text) or command in ("find-batch-size", "schedule")


def test_cli_rules_and_schedules_are_the_library_s():
    from gradpilot.cli import lr as _cli_lr
    from gradpilot.cli import schedule as _cli_schedule
    from gradpilot.lr import suggest
    from gradpilot.schedules import builders as schedules
    from gradpilot.schedules import catalog

    assert tuple(suggest.RULES) == _cli_lr.RULES and _cli_schedule.NAMES is catalog.NAMES  # imported, not copied
    assert tuple(schedules.BUILDERS) == catalog.NAMES  # one builder per name of the one registry


def test_outputs_are_checked_before_the_range_test_runs(tmp_path, monkeypatch):
    import gradpilot.lr.range_test

    ran = []
    monkeypatch.setattr(gradpilot.lr.range_test, "find_lr", lambda *_a, **_k: ran.append(1))
    for plot, message in ((tmp_path, "is a folder"), (Path("/proc/curve.png"), "not writable"),
                          (tmp_path / "f.txt" / "curve.png", "is a file, not a folder")):
        (tmp_path / "f.txt").write_text("x")
        assert message in one_line_error(runner.invoke(app, ["find-lr", "--plot", str(plot)]))
    assert ran == []


def test_json_writes_no_picture_unless_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["find-lr", "--json", "--num-steps", "20"])
    assert result.exit_code == 0 and json.loads(result.stdout)["plot"] is None
    assert list(tmp_path.iterdir()) == []


def test_a_drawing_that_fails_loses_no_result(tmp_path, monkeypatch):
    import gradpilot.plots

    def broken(*_args, **_kwargs):
        raise OverflowError("cannot draw 1e308")

    monkeypatch.setattr(gradpilot.plots, "plot_lr_curve", broken)
    result = runner.invoke(app, ["find-lr", "--num-steps", "20", "--plot", str(tmp_path / "c.png")])
    assert result.exit_code == 2 and "Suggested learning rate" in result.output
    assert "could not draw" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--max-micro-batch", "0"], "--max-micro-batch must be a positive whole number"),
    (["--max-micro-batch", "8", "--target", "-4"], "--target must be a positive whole number"),
    (["--max-micro-batch", "8", "--world-size", "0"], "--world-size must be a positive whole number"),
    (["--max-micro-batch", "8", "--lr", "nan", "--batch-size", "8"], "--lr must be a positive finite number"),
    (["--max-micro-batch", "8", "--lr", "0.1"], "give both --lr and --batch-size"),
    (["--max-micro-batch", "8", "--lr", "0.1", "--batch-size", "8", "--optimizer", "lion"], "choose the rule yourself"),
])
def test_plan_errors_name_the_flag(args, message):
    assert message in one_line_error(runner.invoke(app, ["plan", *args]))


def test_schedule_bounds_and_long_curves(tmp_path):
    assert "more than the" in one_line_error(runner.invoke(app, ["schedule", "cosine", "--steps", "100000000"]))
    assert "unknown scheduler 'cosin'" in one_line_error(runner.invoke(app, ["schedule", "cosin", "--steps", "10"]))
    result = runner.invoke(app, ["schedule", "cosine", "--steps", "200000", "--plot", str(tmp_path / "s.png")])
    assert result.exit_code == 0 and "199999" in result.output


def test_a_task_file_that_exits_is_an_error_not_a_success(tmp_path):
    path = write(tmp_path, "import sys\nsys.exit(0)\n")
    assert "must not exit" in one_line_error(runner.invoke(app, ["find-lr", str(path)]))


def test_an_error_inside_the_user_s_model_is_one_line(tmp_path):
    text = TASK_FILE.replace("model=nn.Linear(4, 2)", "model=nn.Linear(3, 2)")  # wrong input size
    line = one_line_error(runner.invoke(app, ["find-lr", str(write(tmp_path, text))]), code=3)
    assert "RuntimeError" in line and "GRADPILOT_DEBUG=1" in line


COLLATE_TASK = """
import torch
from torch import nn
from torch.utils.data import DataLoader
import gradpilot

def collate(items):  # dict items: default_collate would hand the model a dict, not (inputs, targets)
    return torch.tensor([it["x"] for it in items]), torch.tensor([it["y"] for it in items])

def task(seed: int = 0) -> gradpilot.Task:
    items = [{"x": [float(i % 2)] * 4, "y": i % 2} for i in range(64)]
    return gradpilot.Task(model=nn.Linear(4, 2), train_data=DataLoader(items, batch_size=8, collate_fn=collate),
                          loss_fn=nn.CrossEntropyLoss())
"""


def test_find_batch_size_uses_the_task_s_collate_fn(tmp_path):
    result = runner.invoke(app, ["find-batch-size", str(write(tmp_path, COLLATE_TASK)), "--max-batch-size", "16"])
    assert result.exit_code == 0, result.output
    assert "Largest micro-batch that fits: 16" in result.output and "noise scale" in result.output


def test_a_noise_scale_that_cannot_be_measured_costs_only_itself(tmp_path, monkeypatch):
    import gradpilot.batch.finder
    from gradpilot import GradpilotError

    def unmeasurable(*_args, **_kwargs):
        raise GradpilotError("the noise scale is not measurable from these norms")

    monkeypatch.setattr(gradpilot.batch.finder, "estimate_noise_scale", unmeasurable)
    result = runner.invoke(app, ["find-batch-size", str(write(tmp_path, COLLATE_TASK)), "--max-batch-size", "16"])
    assert result.exit_code == 0, result.output
    assert "Largest micro-batch that fits: 16" in result.output and "no gradient noise scale" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["find-lr", "--num-steps", "2.5"], "error: Invalid value for '--num-steps'"),
    (["find-lr", "--learning-rate", "3"], "error: No such option: --learning-rate"),
    (["bogus"], "error: No such command 'bogus'"),
])
@pytest.mark.slow
def test_usage_mistakes_are_one_line_from_the_console_entry_point(args, message):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "gradpilot.cli", *args], capture_output=True, text=True, timeout=60)
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), out.stderr


@pytest.mark.slow
def test_the_console_entry_point_shows_help_and_exit_codes():
    import subprocess
    import sys

    bare = subprocess.run([sys.executable, "-m", "gradpilot.cli"], capture_output=True, text=True, timeout=60)
    assert bare.returncode == 0 and bare.stdout.startswith("Usage: ") and "diagnose" in bare.stdout
    version = subprocess.run([sys.executable, "-m", "gradpilot.cli", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("gradpilot ")


TUNE_FILE = """
import torch
from torch import nn
from torch.utils.data import TensorDataset
import gradpilot

def task(seed: int = 0) -> gradpilot.Task:
    torch.manual_seed(seed)
    x, v = torch.randn(256, 4), torch.randn(64, 4)
    return gradpilot.Task(model=nn.Linear(4, 2), train_data=TensorDataset(x, (x[:, 0] > 0).long()),
                          val_data=TensorDataset(v, (v[:, 0] > 0).long()), loss_fn=nn.CrossEntropyLoss(),
                          optimizer="sgd", optimizer_kwargs={"momentum": 0.9}, lr=0.05, batch_size=8, epochs=3,
                          name=f"tune-task-{seed}")
"""


def test_tune_on_a_task_file_writes_the_plan_model_and_record(tmp_path):
    path = write(tmp_path, TUNE_FILE)
    out = tmp_path / "out"
    args = ["tune", str(path), "--out", str(out), "--budget", "3", "--fix", "epochs=2", "--storage",
            f"sqlite:///{tmp_path / 'trials.db'}", "--cooldown", "0.1", "--seed", "1", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["plan"]["num_train_epochs"] == 2 and got["plan"]["optim"] == "sgd"
    assert got["plan"]["optim_args"] == "momentum=0.9" and got["spent_runs"] <= 3
    assert all(Path(got[k]).exists() for k in ("plan_path", "model_path", "record_path", "report_path"))
    assert json.loads((out / "tune.json").read_text())["settings"]["seed"] == 1
    again = runner.invoke(app, args[:-1])  # the same command: nothing runs again, the summary ends with the paths
    assert again.exit_code == 0, again.output
    assert again.output.rstrip().splitlines()[-1].startswith("report:") and "learning_rate" in again.output


@pytest.mark.parametrize(("args", "message"), [
    (["--fix", "batch_size"], "--fix takes NAME=VALUE"),
    (["--fix", "momentum=0.9"], "not a plan field"),
    (["--budget", "-1"], "--budget must be a positive"),
    (["--backend", "dask"], "unknown --backend 'dask'; choose one of"),
    (["--n-jobs", "2", "--storage", "sqlite:///x.db"], "n_jobs runs workers on this machine"),
    (["--backend", "ray", "--ray-address", "auto", "--n-jobs", "2"], "leave n_jobs at 1"),
])
def test_tune_bad_input_is_one_line(tmp_path, args, message):
    result = runner.invoke(app, ["tune", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0]


def test_tune_with_worker_processes_and_a_study_name(tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["tune", str(write(tmp_path, TUNE_FILE)), "--out", str(out), "--n-jobs", "2",
                                 "--study", "cli", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plan"]["optim"] == "sgd" and (out / "trials.journal").exists()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "trials.journal")))
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert "cli:stage:schedule" in names and all(n.startswith("cli:") for n in names)


def test_tune_refuses_a_task_without_validation_data(tmp_path):
    result = runner.invoke(app, ["tune", str(write(tmp_path, TASK_FILE)), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "tune needs validation data" in result.output


PRINTING_TASK = TASK_FILE.replace("def task(seed: int = 0) -> gradpilot.Task:",
                                  "print('hello from the task file')\n\ndef task(seed: int = 0) -> gradpilot.Task:\n"
                                  "    print('building the task')")


def test_a_task_file_that_prints_leaves_json_alone(tmp_path):
    result = runner.invoke(app, ["find-lr", str(write(tmp_path, PRINTING_TASK)), "--json", "--num-steps", "20"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["suggestion"] > 0  # stdout is the JSON alone
    assert "hello from the task file" in result.stderr and "building the task" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--num-steps", "100000000"], "num_steps=100,000,000 is more than a range test needs"),
    (["--accumulation-steps", "1000000"], "100,000,000 micro-batches, more than the 100,000 a range test may take"),
])
def test_a_range_test_too_long_to_finish_is_refused_at_once(args, message):
    assert message in one_line_error(runner.invoke(app, ["find-lr", *args]))


NAN_LOSS_TASK = TASK_FILE.replace("loss_fn=nn.CrossEntropyLoss()", "loss_fn=lambda out, y: out.sum() * float('nan')")


def test_find_batch_size_with_a_nan_loss_measures_memory_and_warns_about_the_noise_scale(tmp_path):
    result = runner.invoke(app, ["find-batch-size", str(write(tmp_path, NAN_LOSS_TASK)), "--max-batch-size", "16"])
    assert result.exit_code == 0, result.output
    assert "Largest micro-batch that fits: 16" in result.stdout
    assert "warning: no gradient noise scale: the gradient norms are not finite" in result.stderr


def test_error_text_is_never_read_as_emoji_or_markup(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("step,loss\n" + "".join(f"{i},1.0\n" for i in range(1, 99)) + "99,:100:\n")
    line = one_line_error(runner.invoke(app, ["diagnose", str(bad)]))
    assert "t.csv:100:" in line and "':100:'" in line and "💯" not in line
