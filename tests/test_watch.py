"""gradpilot watch: a live log followed from outside the training process — findings as they appear, exit 1 at
the first failing one (the job stopped by a signal or a stop file), exit 0 when a healthy log stops growing."""

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from gradpilot.cli.logs import run as cli
from gradpilot.diagnosis.findings import FailOn
from gradpilot.diagnosis.watch import Watcher, follow, stopper
from gradpilot.errors import GradpilotError

HEALTHY = [2.0 * math.exp(-s / 40) + 0.2 + 0.01 * math.sin(s) for s in range(200)]


def write_rows(path, start, stop, *, mode="a"):
    with path.open(mode) as f:
        if mode == "w":
            f.write("step,loss,lr\n")
        for s in range(start, stop):
            f.write(f"{s},{HEALTHY[s]:.5f},0.001\n")


def watch(*args):
    return subprocess.Popen([sys.executable, "-m", "gradpilot.cli", "watch", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_nan_appended_to_a_growing_csv_is_caught_within_two_seconds_and_the_job_stopped(tmp_path):
    log, stop = tmp_path / "metrics.csv", tmp_path / "STOP"
    write_rows(log, 0, 60, mode="w")
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # the training job's stand-in
    watcher = watch(log, "--interval", "0.2", "--pid", job.pid, "--stop-file", stop)
    try:
        time.sleep(2.5)  # the watcher is up and has read the healthy start
        assert watcher.poll() is None
        write_rows(log, 60, 120)
        time.sleep(0.5)
        assert watcher.poll() is None  # still healthy: still watching
        with log.open("a") as f:
            f.write("120,nan,0.001\n121,nan,0.001\n")
        appended = time.monotonic()
        out, err = watcher.communicate(timeout=10)
        caught = time.monotonic() - appended
        assert watcher.returncode == 1, (out, err)
        assert caught <= 2.0, caught
        assert "nan" in out and "stopped" in out
        assert stop.exists() and job.wait(timeout=5) == -signal.SIGTERM  # both ways of stopping the job
    finally:
        for p in (watcher, job):
            if p.poll() is None:
                p.kill()


def test_a_healthy_log_that_stops_growing_exits_zero(tmp_path, capsys):
    log = tmp_path / "metrics.csv"
    write_rows(log, 0, 200, mode="w")
    assert cli(["watch", str(log), "--interval", "0.05", "--idle", "0.3"]) == 0
    assert "nothing failing" in capsys.readouterr().out


def test_a_hint_is_said_but_fails_nothing_unless_asked(tmp_path, capsys):
    log = tmp_path / "flat.csv"  # a loss that never moves: a plateau hint, no sure problem
    log.write_text("step,loss\n" + "".join(f"{s},{2.3 + 0.001 * (s % 3)}\n" for s in range(200)))
    assert cli(["diagnose", str(log)]) == 0
    assert cli(["watch", str(log), "--interval", "0.05", "--idle", "0.3"]) == 0
    assert "plateau (a hint)" in capsys.readouterr().out
    assert cli(["diagnose", str(log), "--fail-on", "any"]) == 1
    assert cli(["diagnose", str(log), "--fail-on", "plateau"]) == 1
    assert cli(["diagnose", str(log), "--fail-on", "nan,divergence"]) == 0


def test_a_log_that_never_appears_is_exit_two_in_one_line(tmp_path, capsys):
    assert cli(["watch", str(tmp_path / "nothing.csv"), "--interval", "0.05", "--idle", "0.2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nothing.csv" in err[0]


def test_bad_flags_are_one_line_and_exit_two(tmp_path, capsys):
    log = tmp_path / "m.csv"
    write_rows(log, 0, 50, mode="w")
    assert cli(["watch", str(log), "--fail-on", "nan,typo"]) == 2
    assert "typo" in capsys.readouterr().err
    assert cli(["watch", str(log), "--interval", "0"]) == 2
    assert cli(["watch", str(log), "--pid", "1", "--signal", "NOPE"]) == 2


def test_fail_on_reads_its_words():
    assert FailOn.parse("sure") == FailOn() and FailOn.parse("any").level == "any"
    assert FailOn.parse(" nan , divergence ").kinds == frozenset({"nan", "divergence"})
    for bad in ("", "sure,any", "healthy,", "nan,loud"):
        with pytest.raises(GradpilotError, match="--fail-on"):
            FailOn.parse(bad)


def test_json_lines_are_one_object_per_finding(tmp_path, capsys):
    log = tmp_path / "m.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in enumerate(HEALTHY[:80])) +
                   json.dumps({"step": 80, "loss": float("nan")}) + "\n")
    assert cli(["watch", str(log), "--interval", "0.05", "--idle", "0.3", "--json"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and all(json.loads(line)["kind"] for line in lines)
    assert any(json.loads(line)["kind"] == "nan" for line in lines)


def test_a_finding_is_said_once_and_an_unchanged_log_is_not_read_again(tmp_path):
    log = tmp_path / "m.csv"
    write_rows(log, 0, 100, mode="w")
    watcher, told = Watcher(log), []
    ticks = iter(range(1000))
    code = follow(watcher, tell=told.append, interval=0, idle=3, clock=lambda: float(next(ticks)),
                  sleep=lambda _: None)
    assert code == 0 and told == []  # healthy: nothing said, nothing failing
    assert watcher.poll() is None  # nothing changed since
    flat = tmp_path / "flat.csv"
    flat.write_text("step,loss\n" + "".join(f"{s},{2.3 + 0.001 * (s % 3)}\n" for s in range(200)))
    watcher = Watcher(flat)
    first = watcher.poll()
    assert first is not None and [f.kind for f in first.new] == ["plateau"] and not first.failing
    with flat.open("a") as f:
        f.write("".join(f"{s},{2.3 + 0.001 * (s % 3)}\n" for s in range(200, 260)))
    again = watcher.poll()
    assert again is not None and again.new == ()  # the same plateau, not said twice


def test_stopper_needs_a_pid_or_a_file(tmp_path):
    assert stopper(None, "TERM", None) is None
    stop = stopper(None, "TERM", tmp_path / "a" / "STOP")
    assert stop is not None
    stop()
    assert (tmp_path / "a" / "STOP").read_text().startswith("stopped by gradpilot watch")
    with pytest.raises(GradpilotError, match="--signal"):
        stopper(os.getpid(), "NOPE", None)


def test_a_real_trainer_run_is_stopped_by_watch_through_its_stop_file(tmp_path):
    """The HF Trainer writes trainer_state.json as checkpoints land; watch reads the run's folder as it grows,
    sees the divergence a 100× LR causes and creates the stop file the callback polls: training ends early."""
    pytest.importorskip("transformers")
    from transformers import TrainerCallback

    from gradpilot.integrations.transformers import GradpilotCallback
    from tests.test_integrations_transformers import trainer

    class Paced(TrainerCallback):  # a real model's step time, so the watcher can see the run as it goes
        def on_step_end(self, *args, **kwargs):
            del args, kwargs
            time.sleep(0.03)

    stop_file = tmp_path / "STOP"
    t = trainer(tmp_path, 5.0, callback=GradpilotCallback(stop_file=stop_file), steps=600, save_strategy="steps",
                save_steps=10, save_total_limit=2)
    t.add_callback(Paced())
    watcher = Watcher(tmp_path / "out", fail_on=FailOn.parse("nan,divergence"))
    told, codes = [], []
    thread = threading.Thread(target=lambda: codes.append(
        follow(watcher, tell=told.append, interval=0.1, idle=60, stop=stopper(None, "TERM", stop_file))))
    thread.start()
    t.train()
    thread.join(timeout=70)
    assert codes == [1] and stop_file.exists()
    assert any(f.kind in ("nan", "divergence") for seen in told for f in seen.new)
    assert 10 <= t.state.global_step < 600  # stopped early by the file, not at its end
