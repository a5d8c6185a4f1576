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
