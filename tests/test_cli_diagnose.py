"""gradpilot diagnose: findings, verdict, exit codes, JSON, pictures and pages, from logs of any kind."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from gradpilot.cli import app

runner = CliRunner()


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
    assert finding["remedy"] == {"learning_rate": 3e-05}  # 1e-3 cut ×0.03 (Thresholds.cut_diverged)
    assert out["learning_rate"]["verdict"] == "too high"


def test_diagnose_a_corrupt_log_is_one_line_naming_file_and_line(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text("step,loss\n1,2.0\n2,1.9e\n")
    result = runner.invoke(app, ["diagnose", str(path)])
    assert result.exit_code == 2
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and "broken.csv:3:" in lines[0] and "Traceback" not in result.output


def test_diagnose_exit_codes_tell_scripts_what_was_found(tmp_path):
    healthy = runner.invoke(app, ["diagnose", str(write_run_csv(tmp_path / "ok.csv", diverge=False))])
    assert healthy.exit_code == 0, healthy.output
    (tmp_path / "one.csv").write_text("step,loss\n1,2.3\n")
    short = runner.invoke(app, ["diagnose", str(tmp_path / "one.csv"), "--json"])
    out = json.loads(short.stdout)
    assert short.exit_code == 0 and out["findings"][0]["kind"] == "insufficient_data"
    assert out["learning_rate"]["verdict"] == "unknown"


def test_diagnose_json_is_valid_json_even_with_nan_and_infinity(tmp_path):
    path = tmp_path / "nan.csv"
    path.write_text("step,loss,lr\n" + "".join(f"{s},{2.0 - 0.01 * s},0.1\n" for s in range(30)) + "30,nan,0.1\n31,inf,0.1\n")
    result = runner.invoke(app, ["diagnose", str(path), "--json"])
    assert result.exit_code == 1

    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    out = json.loads(result.stdout, parse_constant=refuse)
    assert out["source"] == str(path) and out["findings"][0]["kind"] == "nan"


def test_diagnose_warns_about_a_cut_last_line_and_reads_the_rest(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,loss,lr\n" + "".join(f"{s},{0.5 + 1.5 * 0.9 ** s},0.1\n" for s in range(50)) + "50,0.7")
    result = runner.invoke(app, ["diagnose", str(path), "--json"])
    assert result.exit_code == 0 and "warning:" in result.stderr and "cut short" in result.stderr
    assert json.loads(result.stdout)["warnings"][0].endswith("read the complete rows before it")


def test_plot_of_extreme_values_is_drawn_or_refused_in_one_line(tmp_path):
    path = tmp_path / "extreme.csv"
    path.write_text("step,loss,lr\n" + "".join(f"{s},{1e300 * (s + 1)},1e-300\n" for s in range(40)))
    result = runner.invoke(app, ["diagnose", str(path), "--plot", str(tmp_path / "d.png")])
    assert result.exit_code in (0, 1, 2) and "Traceback" not in result.output
    assert "Diagnosis of" in result.output  # the diagnosis came out whatever the picture did


@pytest.mark.slow
def test_commands_that_read_logs_never_import_torch(tmp_path):

    log = write_run_csv(tmp_path / "run.csv", diverge=True)
    code = ("import sys\nfrom gradpilot.cli import app\n"
            "try:\n    app(['diagnose', sys.argv[1], '--json'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "import gradpilot, gradpilot.diagnosis.detectors, gradpilot.diagnosis.logs\n"
            "gradpilot.diagnose(gradpilot.read_log(sys.argv[1]))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nprint('clean')\n")
    out = subprocess.run([sys.executable, "-c", code, str(log)], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().endswith("clean"), out.stderr


def test_diagnose_all_reports_a_damaged_run_and_diagnoses_the_others(tmp_path):
    for version in (0, 2):
        (tmp_path / "lightning_logs" / f"version_{version}").mkdir(parents=True)
        write_run_csv(tmp_path / "lightning_logs" / f"version_{version}" / "metrics.csv", diverge=version == 2)
    damaged = tmp_path / "lightning_logs" / "version_1"
    damaged.mkdir()
    (damaged / "metrics.csv").write_text("step,train_loss\n1,2.0\n2,1.9.5\n")
    result = runner.invoke(app, ["diagnose", str(tmp_path), "--all", "--json"])
    assert result.exit_code == 2  # a run could not be read: a script must notice
    runs = json.loads(result.stdout)
    assert len(runs) == 3 and [("error" in r) for r in runs] == [False, True, False]
    assert "metrics.csv:3" in runs[1]["error"] and "divergence" in {f["kind"] for f in runs[2]["findings"]}
    assert "error:" in result.stderr
