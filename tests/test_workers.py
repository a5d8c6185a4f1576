"""tune past one process: worker processes on this machine (journal file), several `gradpilot tune` processes on
one PostgreSQL study (a real server from the pgserver wheel), a dead worker's job retried, and the queues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from gradpilot.errors import GradpilotError
from gradpilot.tuning import queue as _workers
from gradpilot.tuning import tune
from gradpilot.tuning.state import TuneRecord
from tests.conftest import KILL_AFTER_RUNS, small_task, tune_task_file

ROOT = Path(__file__).resolve().parent.parent
TASK_FILE = tune_task_file(items=1024, epochs=6, sleep=0.002)  # six epochs: the final runs stay two


def cli(task_file: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", "from gradpilot.cli import main; main()", "tune", str(task_file), "--out", str(out),
            "--budget", "2", "--json", *extra]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def studies(storage: optuna.storages.BaseStorage) -> dict[str, optuna.Study]:
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    return {name: optuna.load_study(study_name=name, storage=storage) for name in names}


def assert_each_job_ran_once(storage: optuna.storages.BaseStorage, prefix: str = "gradpilot") -> Counter[str]:
    """Every queue empty, each job done exactly once; the workers that did them."""
    workers: Counter[str] = Counter()
    found = studies(storage)
    assert f"{prefix}:stage:schedule" in found
    for name, study in found.items():
        if name == f"{prefix}:lr_search":
            keys = [(t.params["lr"], t.params["micro_batch"], t.params["accumulation"]) for t in study.trials]
            assert len(keys) == len(set(keys)) and all(t.state.is_finished() for t in study.trials)
            continue
        done = [t for t in study.trials if t.state == TrialState.COMPLETE]
        jobs = [json.dumps(t.system_attrs["fixed_params"], sort_keys=True) for t in done]
        assert len(jobs) == len(set(jobs)), f"{name}: a job ran twice"
        assert not [t for t in study.trials if t.state in (TrialState.WAITING, TrialState.RUNNING)], name
        workers.update(t.user_attrs["worker"] for t in done)
    return workers


def test_n_jobs_runs_worker_processes_on_one_journal_file(tmp_path):
    result = tune(small_task(n=1024, epochs=6), out_dir=tmp_path, n_jobs=2)
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "trials.journal")))
    workers = assert_each_job_ran_once(storage)
    assert len(workers) >= 1 and not (tmp_path / "trials.db").exists()
    assert result.plan_path.exists() and result.model_path.exists() and result.metric > 0.5
    again = tune(small_task(n=1024, epochs=6), out_dir=tmp_path, n_jobs=2)  # resumes: nothing runs again
    assert again.plan == result.plan and assert_each_job_ran_once(storage) == workers


def test_n_jobs_with_a_shared_storage_is_refused(tmp_path):
    with pytest.raises(GradpilotError, match="n_jobs runs workers on this machine"):
        tune(small_task(), out_dir=tmp_path, n_jobs=2, storage=f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(GradpilotError, match="n_jobs must be"):
        tune(small_task(), out_dir=tmp_path, n_jobs=0)
    with pytest.raises(GradpilotError, match="study must be a non-empty name"):
        tune(small_task(), out_dir=tmp_path, study="a:b")


def test_workers_with_other_settings_on_one_study_are_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    tune(small_task(), out_dir=tmp_path / "a", storage=url, study="s", budget=2)
    with pytest.raises(GradpilotError, match=r"study 's' in this storage was started with other settings \(budget: 2.0 → 2.5\)"):
        tune(small_task(), out_dir=tmp_path / "b", storage=url, study="s", budget=2.5)


def test_a_queue_gives_each_job_to_one_worker_and_puts_back_a_dead_worker_s_job(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'q.db'}")
    queue = _workers.Queue(storage, "p:jobs")
    assert queue.claim_filling() and not _workers.Queue(storage, "p:jobs").claim_filling()
    queue.fill([{"i": 0}, {"i": 1}, {"i": 2}], {"plan": 7})
    assert _workers.Queue(storage, "p:jobs").note() == {"plan": 7}
    study = optuna.load_study(study_name="p:jobs", storage=storage)
    taken = study.ask()  # a worker takes job 0 and dies with it
    taken.set_user_attr("worker", "elsewhere:1")
    _workers.retry_worker(storage, "p", (), "elsewhere:1")
    queue.work(lambda job: {"double": 2 * job["i"]})
    results = sorted((p["i"], r["double"]) for p, r in queue.results())
    assert results == [(0, 0), (1, 2), (2, 4)]
    assert [t.state for t in study.trials].count(TrialState.FAIL) == 1  # the dead worker's copy
    assert _workers.once(storage, "p:once", lambda: {"ran": 1}) == {"ran": 1}
    assert _workers.once(storage, "p:once", lambda: {"ran": 2}) == {"ran": 1}  # done once, read back after


def test_a_storage_that_cannot_be_opened_is_one_line(tmp_path):
    with pytest.raises(GradpilotError, match="cannot open storage") as err:
        tune(small_task(), out_dir=tmp_path, storage="nosuchdb://x")
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    pgserver = pytest.importorskip("pgserver", reason="pgserver (a PostgreSQL server in a wheel) is in the test extra")
    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server
    server.cleanup()


def database(server, name: str) -> str:
    server.psql(f"CREATE DATABASE {name};")
    return server.get_uri(name)


@pytest.mark.slow
def test_two_tune_processes_share_one_postgresql_study(tmp_path, postgres):
    url = database(postgres, "shared")
    task_file = tmp_path / "task.py"
    task_file.write_text(TASK_FILE)
    procs = [subprocess.Popen(cli(task_file, tmp_path / f"w{i}", "--storage", url, "--study", "both"), env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "database is locked" not in err and "could not serialize" not in err
    plans = [json.loads(out)["plan"] for out, _ in outs]
    assert plans[0] == plans[1]
    workers = assert_each_job_ran_once(optuna.storages.RDBStorage(url), "both")
    assert len(workers) == 2  # both took jobs


@pytest.mark.slow
def test_a_killed_worker_s_job_goes_to_the_other_worker(tmp_path, postgres):
    url = database(postgres, "killed")
    task_file = tmp_path / "task.py"
    task_file.write_text(tune_task_file(items=1024, epochs=6))
    victim = subprocess.Popen(cli(task_file, tmp_path / "victim", "--storage", url, "--study", "k"),
                              env={**env(), KILL_AFTER_RUNS: "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert victim.wait(timeout=300) == -signal.SIGKILL  # killed holding a job of the LR search: its first short run
    storage = optuna.storages.RDBStorage(url)
    running = [t for name, s in studies(storage).items() if "rung" in name for t in s.trials
               if t.state == TrialState.RUNNING]
    assert running and all(t.user_attrs["worker"].endswith(f":{victim.pid}") for t in running)
    survivor = subprocess.run(cli(task_file, tmp_path / "survivor", "--storage", url, "--study", "k"), env=env(),
                              capture_output=True, text=True, timeout=400)
    assert survivor.returncode == 0, survivor.stderr
    failed = [t for name, s in studies(storage).items() for t in s.trials
              if t.state == TrialState.FAIL and not t.user_attrs.get("spare")]
    assert failed and all(t.user_attrs.get("worker", "").endswith(f":{victim.pid}") for t in failed)
    assert_each_job_ran_once(storage, "k")
    assert "learning_rate" in json.loads(survivor.stdout)["plan"]


@pytest.mark.slow
def test_backend_ray_runs_the_short_runs_of_a_task_file_as_ray_tune_trials(tmp_path):
    """One Ray start for both: the task file travels to Ray's workers by value (they cannot import it), and
    the short runs are the built-in search's, run elsewhere."""
    pytest.importorskip("ray.tune", reason="Ray Tune is in the test extra ('gradpilot[ray]')")
    from gradpilot.task_file import load_task

    task_file = tmp_path / "task.py"
    task_file.write_text(tune_task_file(items=1024, epochs=6))
    done = subprocess.run(cli(task_file, tmp_path / "ray", "--backend", "ray"), capture_output=True, text=True,
                          timeout=400, env={**env(), "RAY_AUTH_MODE": "disabled"})  # a throwaway local Ray
    assert done.returncode == 0, done.stderr[-2000:]
    on_ray = json.loads(done.stdout)
    assert "learning_rate" in on_ray["plan"] and on_ray["spent_item_runs"] <= 2
    trials = TuneRecord.read(tmp_path / "ray" / "tune.json").stage("lr_search").evidence.trials
    here = tune(load_task(task_file), out_dir=tmp_path / "here")
    mine = {s.name: s for s in here.stages}["lr_search"].evidence.trials
    assert sorted(t.lr for t in trials) == sorted(t.lr for t in mine)  # the same plan, run elsewhere
    assert all(t.scores for t in trials) and any(t.state == "pruned" for t in trials)
    study = optuna.load_study(study_name="gradpilot:lr_search", storage=JournalStorage(JournalFileBackend(
        str(tmp_path / "ray" / "trials.journal"))))
    assert all(t.user_attrs.get("backend") == "RayBackend" for t in study.trials if t.intermediate_values)
    assert list((tmp_path / "ray" / "runs" / "search" / "ray").glob("lr_search-rung-*"))  # Ray Tune's own record
    assert (tmp_path / "ray" / "plan.yaml").exists() and (tmp_path / "ray" / "model.pt").exists()


def test_backend_is_checked(tmp_path):
    from gradpilot.integrations.ray_tune import RayBackend

    with pytest.raises(GradpilotError, match="backend must run a rung's short runs"):
        tune(small_task(), out_dir=tmp_path, backend="ray")
    with pytest.raises(GradpilotError, match="leave n_jobs at 1"):
        tune(small_task(), out_dir=tmp_path, backend=RayBackend(), n_jobs=2)



def test_a_folder_is_continued_only_with_its_own_storage(tmp_path):
    tune(small_task(), out_dir=tmp_path, budget=2)
    with pytest.raises(GradpilotError, match=r"study: gradpilot → other"):
        tune(small_task(), out_dir=tmp_path, budget=2, study="other")
    with pytest.raises(GradpilotError, match=r"storage: the journal file in out_dir → sqlite:///"):
        tune(small_task(), out_dir=tmp_path, budget=2, storage=f"sqlite:///{tmp_path / 'elsewhere.db'}")
    (tmp_path / "trials.journal").unlink()
    with pytest.raises(GradpilotError, match=r"whose trials are not in the journal file in out_dir \(was trials."):
        tune(small_task(), out_dir=tmp_path, budget=2)
