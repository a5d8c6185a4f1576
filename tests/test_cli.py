import json

from typer.testing import CliRunner

from gradpilot.cli import app
from tests.test_task import TASK_FILE, write

runner = CliRunner()


def test_find_lr_on_the_builtin_example_prints_the_suggestion_and_writes_the_plot(tmp_path):
    png = tmp_path / "curve.png"
    result = runner.invoke(app, ["find-lr", "--num-steps", "30", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "Suggested learning rate" in result.output
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
    assert result.exit_code == 2 and "unknown LR scaling rule 'cube'" in result.output


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


def write_run_csv(path, diverge=False):
    import math

    rows = ["step,train_loss,val_loss,lr"]
    for s in range(300):
        loss = 2.0 * math.exp(-s / 40) + 0.2 + 0.02 * math.sin(s)
        if diverge and s > 150:
            loss *= math.exp((s - 150) / 20)
        rows.append(f"{s},{loss},{0.3 if s % 50 == 49 else ''},0.001")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_diagnose_prints_findings_and_the_lr_verdict(tmp_path):
    path = write_run_csv(tmp_path / "run.csv", diverge=True)
    png = tmp_path / "d.png"
    result = runner.invoke(app, ["diagnose", str(path), "--plot", str(png)])
    assert result.exit_code == 1, result.output  # something found: scripts can tell
    assert "divergence" in result.output and "Learning rate too high" in result.output
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_diagnose_json_uses_the_plan_names(tmp_path):
    result = runner.invoke(app, ["diagnose", str(write_run_csv(tmp_path / "run.csv", diverge=True)), "--json"])
    out = json.loads(result.stdout)
    finding = next(f for f in out["findings"] if f["kind"] == "divergence")
    assert set(finding) >= {"kind", "start", "end", "evidence", "confidence", "remedy"}
    assert finding["remedy"] == {"learning_rate": 0.0003}
    assert out["learning_rate"]["verdict"] == "too high"


def test_diagnose_a_corrupt_log_is_one_line_naming_file_and_line(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text("step,loss\n1,2.0\n2,1.9,7\n")
    result = runner.invoke(app, ["diagnose", str(path)])
    assert result.exit_code == 2
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and "broken.csv:3:" in lines[0] and "Traceback" not in result.output
