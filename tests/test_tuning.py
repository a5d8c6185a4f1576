"""tune on tiny real tasks: each stage, fixed values, the budget, the plan as transformers reads it, resume."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from gradpilot import _fingerprint, scaling
from gradpilot._search import Candidate, lr_grid, rungs_for
from gradpilot.errors import GradpilotError
from gradpilot.examples import accuracy, spirals
from gradpilot.task import Task
from gradpilot.tuning import tune
from tests.conftest import KILL_AFTER_RUNS, small_task, tune_task_file

ROOT = Path(__file__).resolve().parent.parent


class Counting(Dataset):
    """A dataset that counts the items read from it: the absolute reference for the budget."""

    def __init__(self, inner: Dataset) -> None:
        self.inner, self.reads = inner, 0

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        self.reads += 1
        return self.inner[i]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    seen: list[tuple[str, float]] = []
    result = tune(small_task(), out_dir=out, progress=lambda m, s: seen.append((m, s)))
    return result, out, seen


def test_every_stage_runs_in_order_and_records_its_evidence(tuned):
    result, out, seen = tuned
    assert [s.name for s in result.stages] == ["lr_range", "batch", "accumulation", "lr_search", "epochs", "schedule"]
    by = {s.name: s for s in result.stages}
    assert by["lr_range"].decision["lr_found"] > 0 and len(by["lr_range"].evidence["lrs"]) >= 10
    low, found, high = (by["lr_range"].decision[k] for k in ("lr_low", "lr_found", "lr_edge"))
    assert low <= found <= high and 0 <= by["lr_range"].evidence["confidence"] <= 1
    assert "supports" in by["lr_range"].why
    assert 32 in by["batch"].decision["batches"] and by["batch"].evidence["max_micro"] >= 32
    assert by["accumulation"].decision["splits"][0] == [32, 1]
    trials = by["lr_search"].alternatives
    assert len(trials) >= 3 and sum(t["state"] == "complete" for t in trials) <= 1
    at_32 = [t["lr"] for t in trials if t.get("batch", 32) == 32]
    assert at_32 and all(lr <= high * 1.0001 for lr in at_32)  # the candidates stay within the interval's edge
    assert result.plan["learning_rate"] == by["lr_search"].decision["learning_rate"]
    assert 1 <= result.plan["num_train_epochs"] <= 4
    epochs = by["epochs"]
    if not epochs.skipped and len(epochs.evidence["val_metrics"]) == epochs.evidence["max_epochs"]:
        assert epochs.decision["num_train_epochs"] == epochs.evidence["max_epochs"]  # never turned: none cut
    schedule = by["schedule"]  # the schedule that validated better is the plan's, judged from the stage's own scores
    scores = {k: v for alt in schedule.alternatives for k, v in alt.items()}
    if schedule.skipped:
        assert result.plan["lr_scheduler_type"].startswith("constant")
    else:
        best = max(scores, key=scores.get) if len(scores) > 1 else "cosine_with_min_lr"
        assert result.plan["lr_scheduler_type"] == (best if best != "constant" else
                                                    ("constant_with_warmup" if by["epochs"].decision["warmup_steps"]
                                                     else "constant"))
    assert result.metric > 0.5  # three spiral arms: chance is 1/3
    assert seen and seen[-1][1] <= result.spent + 1e-9 and any("range test" in m for m, _ in seen)
    record = json.loads((out / "tune.json").read_text())
    assert set(record["stages"]) == {s.name for s in result.stages} and record["plan"] == result.plan


def test_the_search_keeps_only_the_live_candidates_on_disk_and_every_stage_its_seconds(tuned, tmp_path):
    from gradpilot._state import model_state
    from gradpilot.runner import LocalRun, Setting

    result, out, _ = tuned
    search = next(s for s in result.stages if s.name == "lr_search")
    task = small_task()
    one = LocalRun(task, Setting(0.01, 32), seed=0, weights=model_state(task.model))
    one.advance(64)
    one.save(tmp_path / "one.pt")  # one candidate's saved run: weights and optimizer state
    size = (tmp_path / "one.pt").stat().st_size
    candidates = len(search.alternatives)
    assert candidates >= 3 and 0 < search.evidence["peak_disk_bytes"] <= 2 * size * 1.05  # not one per candidate
    assert not list((out / "runs" / "search").glob("trial-*.pt"))  # the last rung's runs are not kept
    record = json.loads((out / "tune.json").read_text())
    assert set(record["seconds"]) == {s.name for s in result.stages}
    by = {s.name: s.seconds for s in result.stages}
    assert all(v >= 0 for v in by.values()) and by["lr_range"] > 0 and by["lr_search"] > 0 and by["schedule"] > 0
    assert all(t["seconds"] > 0 for t in search.alternatives if t["scores"])


def test_the_model_file_holds_the_weights_scored(tuned):
    result, out, _ = tuned
    from gradpilot.evaluation import evaluate

    task = small_task()
    task.model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    assert evaluate(task) == pytest.approx(result.metric)
    assert evaluate(result.model, task.val_loader(), task.loss_fn, accuracy) == pytest.approx(result.metric)


def test_the_plan_means_what_transformers_means_by_it(tuned):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    result, out, _ = tuned
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    assert plan == result.plan
    args = transformers.TrainingArguments(output_dir=str(out / "hf"), report_to="none", **plan)
    steps = math.ceil(512 / (args.per_device_train_batch_size * args.gradient_accumulation_steps))
    total = steps * int(args.num_train_epochs)
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=args.learning_rate)
    sched = transformers.get_scheduler(args.lr_scheduler_type, opt, num_warmup_steps=args.get_warmup_steps(total),
                                       num_training_steps=total, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    hf = []
    for _ in range(total):
        hf.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    stage = "schedule" if "cosine" in result.plan["lr_scheduler_type"] else "epochs"
    ours = next(s for s in result.stages if s.name == stage).evidence["lrs"][:total]
    assert ours == pytest.approx(hf, rel=1e-9, abs=1e-15)
    assert hf[0] == pytest.approx(result.plan["learning_rate"])  # no warmup here: the run starts at the peak


@pytest.mark.parametrize("name", ["constant_with_warmup", "linear", "cosine_with_min_lr"])
def test_gradpilot_s_transformers_schedules_equal_transformers(name):
    transformers = pytest.importorskip("transformers")
    from gradpilot.schedules import lr_curve

    options = {"warmup_steps": 7, **({"min_lr": 1e-5} if name == "cosine_with_min_lr" else {})}
    ours = lr_curve(name, steps=60, lr=1e-3, **options)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = transformers.get_scheduler(name, opt, num_warmup_steps=7, num_training_steps=60,
                                       scheduler_specific_kwargs={"min_lr": 1e-5} if "min" in name else None)
    theirs = []
    for _ in range(60):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert ours[0] == 0.0 and ours[7] == pytest.approx(1e-3)  # by hand: from 0, at the peak after warmup


def test_the_budget_is_never_exceeded_counted_by_the_data(tmp_path):
    train = Counting(spirals(512, seed=0))
    task = small_task(train=train)
    result = tune(task, budget=1.5, out_dir=tmp_path)
    run = 512 * 4
    digests = 2 * 8  # each checkpointed fit reads 8 items to fingerprint its data
    assert result.spent <= 1.5
    assert train.reads - digests <= 1.5 * run
    assert train.reads - digests == pytest.approx(result.spent * run, rel=0.05)  # tune's count is the real one


def test_a_fixed_batch_skips_its_stage_and_rescales_the_lr(tmp_path):
    result = tune(small_task(), out_dir=tmp_path, fixed={"batch_size": 64, "epochs": 2}, budget=2)
    by = {s.name: s for s in result.stages}
    assert by["batch"].skipped == "fixed" and by["epochs"].skipped == "fixed"
    assert result.plan["per_device_train_batch_size"] == 64 and result.plan["num_train_epochs"] == 2
    decided = by["lr_range"].decision
    found = decided["lr_found"]
    center = scaling.scale_lr(found, 32, 64, "sqrt")
    assert center == pytest.approx(found * math.sqrt(2))
    if decided["lr_confidence"] < 0.5:  # an unsure range test centres the runs between its pick and its edge
        center = math.sqrt(center * decided["lr_edge"] * math.sqrt(2))
    assert any(t["lr"] == pytest.approx(center) for t in by["lr_search"].alternatives)
    assert all(t["lr"] <= decided["lr_edge"] * math.sqrt(2) * 1.0001 for t in by["lr_search"].alternatives)


def test_a_budget_for_one_full_run_spends_it_on_the_decaying_schedule(tmp_path):
    result = tune(small_task(n=2048, epochs=2), out_dir=tmp_path)  # two 2-epoch runs would leave the search little
    by = {s.name: s for s in result.stages}
    assert by["epochs"].skipped == "budget" and by["epochs"].decision["num_train_epochs"] == 2
    assert by["schedule"].decision["lr_scheduler_type"] == "cosine_with_min_lr" and not by["schedule"].skipped
    assert len(by["schedule"].evidence["val_metrics"]) == 2 and result.plan["num_train_epochs"] == 2
    assert result.metric == by["schedule"].evidence["val_metrics"][-1] and result.spent <= 3


def test_fixed_lr_and_schedule_skip_their_stages(tmp_path):
    result = tune(small_task(), out_dir=tmp_path, budget=2,
                  fixed={"learning_rate": 0.02, "lr_scheduler_type": "linear", "accumulation": 2})
    by = {s.name: s for s in result.stages}
    assert by["lr_range"].skipped == by["lr_search"].skipped == by["accumulation"].skipped == "fixed"
    assert result.plan["learning_rate"] == 0.02 and result.plan["lr_scheduler_type"] == "linear"
    assert result.plan["gradient_accumulation_steps"] == 2 and result.plan["per_device_train_batch_size"] == 16


def test_a_plan_fixed_to_a_constant_lr_is_searched_at_its_constant_lr(tmp_path):
    result = tune(small_task(), out_dir=tmp_path, budget=2, fixed={"scheduler": "constant"})
    by = {s.name: s for s in result.stages}
    assert by["lr_search"].evidence["cooldown"] == 0.0 and by["schedule"].skipped == "fixed"
    assert result.plan["lr_scheduler_type"] == "constant"


def test_no_cooldown_and_an_own_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    result = tune(small_task(), out_dir=tmp_path / "out", cooldown=0.0, storage=url, seed=3, budget=2)
    study = optuna.load_study(study_name="gradpilot:lr_search", storage=url)
    assert len(study.trials) == len(next(s for s in result.stages if s.name == "lr_search").alternatives)
    assert not (tmp_path / "out" / "trials.db").exists()
    assert next(s for s in result.stages if s.name == "lr_search").evidence["cooldown"] == 0.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"budget": 0}, "budget must be a positive"),
    ({"budget": 0.05}, "too small"),
    ({"fixed": {"momentum": 0.9}}, "not a plan field"),
    ({"fixed": {"epochs": 2.5}}, "whole number"),
    ({"fixed": {"scheduler": "cosine"}}, "lr_scheduler_type must be one of"),
    ({"cooldown": 1.0}, "cooldown"),
])
def test_bad_input_is_one_clear_line(tmp_path, kwargs, message):
    with pytest.raises(GradpilotError, match=message) as err:
        tune(small_task(), out_dir=tmp_path, **kwargs)
    assert "\n" not in str(err.value)


def test_a_task_without_validation_data_is_refused(tmp_path):
    with pytest.raises(GradpilotError, match="tune needs validation data"):
        tune(small_task(val=False), out_dir=tmp_path)


def test_another_command_in_the_same_folder_is_refused(tuned):
    _, out, _ = tuned
    with pytest.raises(GradpilotError, match=r"other settings \(budget: 3.0 → 2.5\)"):
        tune(small_task(), out_dir=out, budget=2.5)
    task = small_task()  # what fit's fingerprint covers, tune's settings cover: here the optimizer's weight decay
    with pytest.raises(GradpilotError, match=r"other settings \(weight_decay: 0.01 → 0.1\)") as err:
        tune(Task(**{**task.__dict__, "optimizer_kwargs": {"weight_decay": 0.1}}), out_dir=out)
    assert "\n" not in str(err.value)
    flipped = Task(**{**task.__dict__, "higher_is_better": False})
    with pytest.raises(GradpilotError, match=r"higher_is_better: True → False"):
        tune(flipped, out_dir=out)


def test_the_same_command_again_runs_nothing(tuned):
    result, out, _ = tuned
    task = small_task()
    train = Counting(task.train_data)
    again = tune(Task(**{**task.__dict__, "train_data": train}), out_dir=out)
    assert train.reads == _fingerprint._SAMPLES  # the few items the settings check digests; none trained on
    assert again.plan == result.plan and again.spent == result.spent


def test_search_helpers():
    grid = lr_grid(1e-3, 1.0)
    assert grid[0] == pytest.approx(1e-3) and sorted(grid) == pytest.approx([1e-4, 10**-3.5, 1e-3, 10**-2.5, 1e-2])
    low = lr_grid(1e-3, 2e-3)  # the edge slides the grid down rather than lose candidates
    assert max(low) <= 2e-3 and len(low) == 5
    high = lr_grid(1e-3, 1.0, floor=5e-4)  # and the interval's floor slides it up while it fits under the edge
    assert min(high) >= 5e-4 and max(high) <= 1.0 and sorted(high) == pytest.approx([10**-3.5 * 10**(k / 2) for k in
                                                                                     range(1, 6)])
    squeezed = lr_grid(1e-3, 2e-3, floor=1e-3)  # no room above: the edge wins over the floor
    assert max(squeezed) <= 2e-3
    rungs = rungs_for(100_000, 5, 0.2, 32)
    assert len(rungs) == 2 and rungs[1] == 3 * rungs[0]
    cost = 5 * (rungs[0] + 0.2 * rungs[0]) + 1 * (2 * rungs[0] + 0.2 * rungs[1])  # a third of 5, at least one, goes on
    assert 0.9 * 100_000 < cost <= 100_000
    assert rungs_for(10, 5, 0.2, 32)[0] == 32  # never shorter than one batch
    assert Candidate(1e-3, 16, 4).batch == 64


def _tune_cli(task_file: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", "from gradpilot.cli import main; main()", "tune", str(task_file), "--out", str(out),
            "--budget", "3", "--json"]


@pytest.mark.slow
def test_a_killed_tune_continues_and_reruns_nothing_finished(tmp_path):
    task_file = tmp_path / "task.py"
    task_file.write_text(tune_task_file())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    whole = subprocess.run(_tune_cli(task_file, tmp_path / "whole"), capture_output=True, text=True, env=env,
                           timeout=300)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"  # killed right after its second short run reported its score, before the job ended
    killed = subprocess.run(_tune_cli(task_file, out), env={**env, KILL_AFTER_RUNS: "2"}, capture_output=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL
    before = json.loads((out / "tune.json").read_text())["stages"]
    study = optuna.load_study(study_name="gradpilot:lr_search", storage=f"sqlite:///{out / 'trials.db'}")
    scored = {t.number: dict(t.intermediate_values) for t in study.trials}
    assert "lr_search" not in before and "lr_range" in before and any(scored.values())
    resumed = subprocess.run(_tune_cli(task_file, out), capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = json.loads((out / "tune.json").read_text())
    for name, stage in before.items():
        assert after["stages"][name] == stage  # finished stages are read back, not run again
    study = optuna.load_study(study_name="gradpilot:lr_search", storage=f"sqlite:///{out / 'trials.db'}")
    for t in study.trials:  # a score reported before the kill is kept, not recomputed
        for rung, value in scored.get(t.number, {}).items():
            assert t.intermediate_values[rung] == value
    assert len({(t.params["lr"], t.params["micro_batch"]) for t in study.trials}) == len(study.trials)
    assert json.loads(resumed.stdout)["plan"] == json.loads(whole.stdout)["plan"]  # as if never killed


def converged_regression(seed: int = 1) -> Task:
    """A linear model already at its least-squares optimum under SGD + momentum: the gradient is all noise, so
    the noise scale's |G|² comes out negative (as on a realistic CNN under SGD + momentum + weight decay)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.5 * torch.randn(512, 1, generator=g)
    model = nn.Linear(4, 1)
    solution = torch.linalg.lstsq(torch.cat([x, torch.ones(512, 1)], 1), y).solution
    with torch.no_grad():
        model.weight.copy_(solution[:4].T)
        model.bias.copy_(solution[4])
    return Task(model=model, train_data=torch.utils.data.TensorDataset(x, y),
                val_data=torch.utils.data.TensorDataset(x, y), loss_fn=nn.MSELoss(), optimizer="sgd",
                optimizer_kwargs={"momentum": 0.9}, lr=0.01, batch_size=32, epochs=6, name="converged")


def test_a_noise_scale_that_cannot_be_measured_costs_a_warning_and_keeps_the_task_s_batch(tmp_path):
    from gradpilot.batch_size import estimate_noise_scale

    with pytest.raises(GradpilotError, match="not measurable"):  # the absolute reference: the estimate fails here
        estimate_noise_scale(converged_regression(), small_batch=8, big_batch=128, batches=8, seed=0)
    with pytest.warns(UserWarning, match="noise scale could not be measured.*keeps the task's batch 32"):
        result = tune(converged_regression(), out_dir=tmp_path)
    batch = {s.name: s for s in result.stages}["batch"]
    assert batch.decision["batches"] == [32] and batch.evidence["noise_scale"] is None
    assert batch.why.startswith("the task's batch 32 is kept: the gradient noise scale could not be measured")
    assert result.plan["per_device_train_batch_size"] == 32 and result.spent <= 3


def test_more_workers_than_cores_are_capped_with_a_warning(monkeypatch):
    from gradpilot import tuning as tune_module

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    with pytest.warns(UserWarning, match="n_jobs=64 is more than the 2 cores this process may use: running 2"):
        assert tune_module._at_most_the_cores(64) == 2
    assert tune_module._at_most_the_cores(2) == 2


@pytest.mark.parametrize("name", ["report.html", "model.pt", "plan.yaml", "tune.json"])
def test_an_output_that_is_a_folder_is_refused_before_any_work(tmp_path, name):
    (tmp_path / name).mkdir()
    task = small_task()
    train = Counting(task.train_data)
    with pytest.raises(GradpilotError, match=f"{name} is a folder, where tune writes a file: move it away"):
        tune(Task(**{**task.__dict__, "train_data": train}), out_dir=tmp_path)
    assert train.reads <= _fingerprint._SAMPLES  # nothing trained


def test_a_metric_that_is_always_nan_ends_in_a_warning_not_a_traceback(tmp_path):
    task = small_task(n=256, epochs=2)
    nan_metric = Task(**{**task.__dict__, "metric": lambda _out, _y: float("nan")})
    with pytest.warns(UserWarning, match="validation metric of the model tune trained is not finite"):
        result = tune(nan_metric, out_dir=tmp_path)
    assert math.isnan(result.metric) and result.model_path.exists()
    assert json.loads(result.record_path.read_text())["metric"] is None  # strict JSON: NaN written as null


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_a_fixed_lr_that_is_not_a_positive_finite_number_is_refused(tmp_path, value):
    with pytest.raises(GradpilotError, match="learning_rate must be a positive finite number"):
        tune(small_task(), out_dir=tmp_path, fixed={"lr": value})


@pytest.mark.parametrize("budget", [3.0, 2.0])
def test_a_one_epoch_fine_tune_is_tuned_within_its_budget(tmp_path, budget):
    task = small_task(n=512, epochs=1)  # 16 steps a run: fewer than a usual range test
    train = Counting(task.train_data)
    result = tune(Task(**{**task.__dict__, "train_data": train}), out_dir=tmp_path, budget=budget)
    assert result.spent <= budget
    read = train.reads - 2 * _fingerprint._SAMPLES  # every item read to train: the two data digests aside
    assert read <= budget * 512 + 32  # the absolute count: within the budget, but for the last batch of a rung
    assert read == pytest.approx(result.spent * 512, rel=0.05)  # tune's count is the real one
    assert result.plan["num_train_epochs"] == 1


def test_a_budget_far_beyond_what_tune_can_use_is_not_spent(tmp_path):
    result = tune(small_task(n=256, epochs=2), out_dir=tmp_path, budget=1e6)
    search = {s.name: s for s in result.stages}["lr_search"]
    assert max(search.evidence["rungs"]) <= 256 * 2  # no short run longer than the run it stands for
    assert result.spent < 10


def test_a_batch_larger_than_the_data_and_a_dataset_smaller_than_a_batch_are_refused(tmp_path):
    with pytest.raises(GradpilotError, match=r"the fixed batch \(100000\) is larger than the training set \(512"):
        tune(small_task(), out_dir=tmp_path / "a", fixed={"batch_size": 100000})
    tiny = small_task(n=5)
    with pytest.raises(GradpilotError, match="the training set has 5 items, fewer than one batch of 32: give more"):
        tune(tiny, out_dir=tmp_path / "b")


def test_a_damaged_weights_file_is_one_line_naming_it(tuned, tmp_path):
    shutil.copytree(tuned[1], tmp_path, dirs_exist_ok=True)
    (tmp_path / "runs" / "initial.pt").write_bytes(b"half a file")
    with pytest.raises(GradpilotError, match=r"runs/initial.pt cannot be read safely \(.*\): use a new out_dir") as err:
        tune(small_task(), out_dir=tmp_path)
    assert "\n" not in str(err.value)


def test_a_model_initialised_otherwise_is_refused_and_the_same_task_object_continues(tuned, tmp_path):
    result, out, _ = tuned
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    trained = Task(**{**small_task().__dict__, "model": result.model})  # holding the weights tune trained
    assert tune(trained, out_dir=tmp_path).plan == result.plan  # as the same Task object again would: continues
    torch.manual_seed(123)
    other = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 3))  # the same layout, other initial weights
    with pytest.raises(GradpilotError, match=r"started from other weights \(task_weights: \w+ → \w+\)"):
        tune(Task(**{**small_task().__dict__, "model": other}), out_dir=tmp_path)


def test_a_tune_stopped_half_way_leaves_the_model_as_it_found_it_and_continues(tmp_path):
    task = small_task(n=256, epochs=2)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}

    def stop(message, _spent):
        if message.startswith("lr "):  # the search's first short run
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(task, out_dir=tmp_path, budget=2, progress=stop)
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())
    assert tune(task, out_dir=tmp_path, budget=2).spent <= 2  # Ctrl-C, then the same call again


def _changed(change: str) -> Task:
    task = small_task()
    if change == "momentum":
        return Task(**{**task.__dict__, "optimizer": "sgd", "optimizer_kwargs": {"momentum": 0.9}})
    if change == "data":
        return Task(**{**task.__dict__, "train_data": spirals(512, seed=7)})  # the same length, other items
    if change == "metric":
        return Task(**{**task.__dict__, "metric": lambda out, y: float((out.argmax(1) != y).float().mean())})
    if change == "loss":
        return Task(**{**task.__dict__, "loss_fn": nn.CrossEntropyLoss(label_smoothing=0.1)})
    return Task(**{**task.__dict__, "max_grad_norm": 1.0})


@pytest.mark.parametrize(("change", "named"), [
    ("momentum", "optimizer: AdamW → SGD"), ("data", r"train_data: 512 items, \w+ → 512 items, \w+"),
    ("metric", "metric: accuracy → "), ("loss", "label_smoothing=0.0.* → CrossEntropyLoss"),
    ("clipping", "max_grad_norm: None → 1.0"),
])
def test_a_changed_task_on_a_tuned_folder_is_refused_naming_the_change(tuned, change, named):
    with pytest.raises(GradpilotError, match=named) as err:
        tune(_changed(change), out_dir=tuned[1])
    assert "\n" not in str(err.value) and "use a new out_dir, or the same arguments" in str(err.value)


def test_validation_that_never_turns_keeps_every_epoch(tmp_path):
    task = small_task(n=512, epochs=3)  # at a small fixed LR the validation accuracy climbs all the way
    result = tune(task, out_dir=tmp_path, fixed={"lr": 3e-3, "batch_size": 32, "lr_scheduler_type": "constant"})
    epochs = {s.name: s for s in result.stages}["epochs"]
    metrics = epochs.evidence["val_metrics"]
    assert len(metrics) == 3 and max(metrics) > metrics[0]  # early stopping never fired
    assert result.plan["num_train_epochs"] == 3 and "did not turn" in epochs.why
