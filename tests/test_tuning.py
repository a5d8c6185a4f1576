"""tune on tiny real tasks: each stage, fixed values, the budget, the trunk, the plan as transformers reads it,
resume."""

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

from gradpilot import scaling
from gradpilot.errors import GradpilotError
from gradpilot.examples import accuracy, spirals
from gradpilot.train import fingerprint as _fingerprint
from gradpilot.train.task import Task
from gradpilot.tuning import tune
from gradpilot.tuning.search import above, lr_grid
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
    assert [s.name for s in result.stages] == ["clock", "lr_range", "batch", "accumulation", "lr_search", "epochs",
                                                "schedule"]
    by = {s.name: s for s in result.stages}
    clock = by["clock"].decision
    assert clock.item_seconds > 0 and clock.validation_seconds > 0 and clock.run_items == 2048 and clock.validations == 4
    found = by["lr_range"].decision
    assert found.suggestion > 0 and len(by["lr_range"].evidence.lrs) >= 10
    assert found.low <= found.suggestion <= found.high and 0 <= found.confidence <= 1
    assert "supports" in by["lr_range"].why
    assert 32 in by["batch"].decision.batches and by["batch"].decision.max_micro >= 32
    assert by["accumulation"].decision.splits[0] == (32, 1)
    trials = by["lr_search"].evidence.trials
    assert len(trials) >= 3 and sum(t.state == "complete" for t in trials) <= 1
    at_32 = [t.lr for t in trials if t.batch == 32]
    assert at_32 and all(lr <= found.high * 1.0001 for lr in at_32)  # the candidates stay within the edge
    chosen = by["lr_search"].decision
    assert result.plan["learning_rate"] == chosen.learning_rate and chosen.trial is not None
    trained = by["epochs"].decision
    branches = by["epochs"].evidence.branches
    assert [b.epochs for b in branches] == list(chosen.branches) and trained.num_train_epochs in chosen.branches
    scores = [b.score for b in branches]
    assert trained.metric == max(scores) == result.metric  # the branch that validated best is the model
    assert result.plan["num_train_epochs"] == branches[by["epochs"].evidence.winner].epochs
    assert result.plan["lr_scheduler_type"] == "warmup_stable_decay"
    assert result.metric > 0.5  # three spiral arms: chance is 1/3
    assert seen and any("range test" in m for m, _ in seen) and any("trunk" in m for m, _ in seen)
    record = json.loads((out / "tune.json").read_text())
    assert set(record["stages"]) == {s.name for s in result.stages} and record["plan"] == result.plan
    assert result.spent_items <= 2.0 and record["spent_item_runs"] == pytest.approx(result.spent_items)


def test_the_winner_is_continued_not_restarted(tuned):
    result, _, _ = tuned
    by = {s.name: s for s in result.stages}
    winner = next(t for t in by["lr_search"].evidence.trials if t.trial == by["lr_search"].decision.trial)
    rung = max(int(k) for k in winner.scores)
    ev = by["epochs"].evidence
    assert ev.from_step == rung // 32 > 0  # the trunk went on from the search's run of the winner
    assert list(ev.trunk_lrs[:ev.from_step]) == [pytest.approx(by["lr_search"].decision.learning_rate)] * (rung // 32)
    # trained once: the search's items plus the trunk's, not a run from scratch after the search
    assert by["epochs"].items < 2048 + sum(32 * b.decay for b in ev.branches)


def test_the_search_and_the_trunk_keep_only_what_a_decision_needs_on_disk(tuned, tmp_path):
    from gradpilot.train.run import local_run
    from gradpilot.train.seam import Setting
    from gradpilot.train.state import model_state

    result, out, _ = tuned
    task = small_task()
    one = local_run(task, Setting(0.01, 32), seed=0, weights=model_state(task.model))
    one.advance(2)
    one.save(tmp_path / "one")  # one candidate's saved run: weights and optimizer state
    size = sum(p.stat().st_size for p in (tmp_path / "one").iterdir())
    search = next(s for s in result.stages if s.name == "lr_search")
    assert len(search.evidence.trials) >= 3
    record = json.loads((out / "tune.json").read_text())
    assert 0 < record["peak_disk_bytes"] <= 3 * size  # not one run per candidate
    assert not list((out / "runs" / "search").glob("trial-*"))  # the winner's run became the trunk's
    assert set(record["stages"]) == {s.name for s in result.stages}
    assert all(s.seconds >= 0 for s in result.stages) and search.seconds > 0
    assert all(t.seconds > 0 for t in search.evidence.trials if t.scores)
    work = record["seconds"]  # split by kind, what the budget counts apart from the bookkeeping
    assert work["training"] > 0 and work["validation"] > 0 and work["other"] >= 0


def test_the_model_file_holds_the_weights_scored(tuned):
    result, out, _ = tuned
    from gradpilot.train.evaluation import evaluate

    task = small_task()
    task.model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    assert evaluate(task) == pytest.approx(result.metric)
    assert evaluate(result.model, task.val_loader(), task.loss_fn, accuracy) == pytest.approx(result.metric)


def test_the_plan_means_what_transformers_means_by_it(tuned):
    """transformers' get_scheduler over the plan's steps gives the LRs the winning branch trained at, step for
    step: the warmup, the trunk's stable phase and the branch's decay."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    result, out, _ = tuned
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    assert plan == result.plan and plan["lr_scheduler_type"] == "warmup_stable_decay"
    args = transformers.TrainingArguments(output_dir=str(out / "hf"), report_to="none", **plan)
    steps = math.ceil(512 / (args.per_device_train_batch_size * args.gradient_accumulation_steps))
    total = steps * int(args.num_train_epochs)
    kwargs = args.lr_scheduler_kwargs
    assert "num_stable_steps" not in kwargs  # transformers derives the stable phase from the run's length
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=args.learning_rate)
    sched = transformers.get_scheduler(args.lr_scheduler_type, opt, num_warmup_steps=args.get_warmup_steps(total),
                                       num_training_steps=total, scheduler_specific_kwargs=kwargs)
    hf = []
    for _ in range(total):
        hf.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = list(next(s for s in result.stages if s.name == "epochs").evidence.lrs)
    assert len(ours) == total and ours == pytest.approx(hf, rel=1e-9, abs=1e-15)
    decay = kwargs["num_decay_steps"]  # by hand: the peak until the decay, then down linearly to 1/decay of it
    assert hf[total - decay - 1] == pytest.approx(plan["learning_rate"])
    assert hf[-1] == pytest.approx(plan["learning_rate"] / decay)


@pytest.mark.parametrize("name", ["constant_with_warmup", "linear", "cosine_with_min_lr"])
def test_gradpilot_s_transformers_schedules_equal_transformers(name):
    transformers = pytest.importorskip("transformers")
    from gradpilot.schedules.builders import lr_curve

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
    digests = 8  # the settings read 8 items to fingerprint the data
    assert result.spent_items <= 1.5
    assert train.reads - digests <= 1.5 * run
    assert train.reads - digests == pytest.approx(result.spent_items * run, rel=0.02)  # tune's count is the real one
    assert result.plan["num_train_epochs"] >= 1  # a budget of 1.5 still gives a plan


def test_a_time_budget_is_a_duration_and_counts_in_measured_seconds(tmp_path):
    from gradpilot.tuning import parse_duration

    assert [parse_duration(v) for v in ("90", "90s", "30m", "1.5h", 45)] == [90, 90, 1800, 5400, 45]
    for bad in ("soon", "-5m", "0", "3 days"):
        with pytest.raises(GradpilotError, match="time_budget must be"):
            parse_duration(bad)
    with pytest.raises(GradpilotError, match="not both"):
        tune(small_task(), out_dir=tmp_path / "a", budget=2, time_budget="1m")
    result = tune(small_task(), out_dir=tmp_path / "b", time_budget="1h")  # far more than a tiny task can use
    clock = result.stages[0].decision
    assert result.budget == pytest.approx(3600 / clock.run_seconds)  # the runs an hour holds, by the clock
    assert result.spent_items < 5  # the trunk is one run, a candidate trains half a run at most, the batch trials


def test_a_fixed_batch_skips_its_stage_and_rescales_the_lr(tmp_path):
    result = tune(small_task(), out_dir=tmp_path, fixed={"batch_size": 64, "epochs": 2}, budget=2)
    by = {s.name: s for s in result.stages}
    assert by["batch"].skipped == "fixed" and by["lr_search"].decision.branches == (2,)
    assert result.plan["per_device_train_batch_size"] == 64 and result.plan["num_train_epochs"] == 2
    decided = by["lr_range"].decision
    center = scaling.scale_lr(decided.suggestion, 32, 64, "sqrt")
    assert center == pytest.approx(decided.suggestion * math.sqrt(2))
    if decided.confidence < 0.5:  # an unsure range test centres the runs between its pick and its edge
        center = math.sqrt(center * decided.high * math.sqrt(2))
    assert any(t.lr == pytest.approx(center) for t in by["lr_search"].evidence.trials)
    assert all(t.lr <= decided.high * math.sqrt(2) * 1.0001 for t in by["lr_search"].evidence.trials)


def test_a_small_budget_trains_the_task_s_epochs_with_one_branch(tmp_path):
    result = tune(small_task(), out_dir=tmp_path, budget=1.3)  # three branches and a search cannot both fit
    by = {s.name: s for s in result.stages}
    branches = by["epochs"].evidence.branches
    assert [b.epochs for b in branches] == [4] and result.plan["num_train_epochs"] == 4
    assert result.spent_items <= 1.3


def test_fixed_lr_and_schedule_skip_their_stages(tmp_path):
    result = tune(small_task(), out_dir=tmp_path, budget=2,
                  fixed={"learning_rate": 0.02, "lr_scheduler_type": "linear", "accumulation": 2})
    by = {s.name: s for s in result.stages}
    assert by["lr_range"].skipped == by["lr_search"].skipped == by["accumulation"].skipped == "fixed"
    assert by["epochs"].skipped == "fixed" and by["epochs"].decision.scheduler == "linear"
    assert result.plan["learning_rate"] == 0.02 and result.plan["lr_scheduler_type"] == "linear"
    # a fixed accumulation accumulates the task's own micro-batch: 32 × 2, as the user set the micro-batch
    assert result.plan["gradient_accumulation_steps"] == 2 and result.plan["per_device_train_batch_size"] == 32
    lrs = by["epochs"].evidence.lrs  # a linear decay from the peak over the run: 8 steps (of 32 × 2) an epoch
    assert lrs[0] == pytest.approx(0.02) and lrs[-1] == pytest.approx(0.02 / 32) and len(lrs) == 32


def test_a_plan_fixed_to_a_constant_lr_is_searched_at_its_constant_lr(tmp_path):
    result = tune(small_task(), out_dir=tmp_path, budget=2, fixed={"scheduler": "constant"})
    by = {s.name: s for s in result.stages}
    assert by["lr_search"].evidence.cooldown == 0.0 and by["schedule"].skipped == "fixed"
    assert result.plan["lr_scheduler_type"] == "constant"
    assert all(b.decay == 0 for b in by["epochs"].evidence.branches)  # validations on the trunk, no decay


def test_no_cooldown_and_an_own_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    result = tune(small_task(), out_dir=tmp_path / "out", cooldown=0.0, storage=url, seed=3, budget=2)
    study = optuna.load_study(study_name="gradpilot:lr_search", storage=url)
    assert len(study.trials) == len(next(s for s in result.stages if s.name == "lr_search").evidence.trials)
    assert not (tmp_path / "out" / "trials.journal").exists()
    assert next(s for s in result.stages if s.name == "lr_search").evidence.cooldown == 0.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"budget": 0}, "budget must be a positive"),
    ({"budget": 0.05}, "too small"),
    ({"fixed": {"momentum": 0.9}}, "not a plan field"),
    ({"fixed": {"epochs": 2.5}}, "whole number"),
    ({"fixed": {"scheduler": "cosine"}}, "lr_scheduler_type must be one of"),
    ({"budget": -1}, "budget must be a positive"),
    ({"time_budget": "0s"}, "time_budget must be a positive"),
    ({"time_budget": "0.001s"}, r"time budget 0.001 s \(0.\d+ runs of this task\) is too small"),
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
    with pytest.raises(GradpilotError, match=r"other settings \(budget: 2.0 → 2.5\)"):
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
    assert sorted(lr_grid(1e-3, 1.0, 3)) == pytest.approx([10**-3.5, 1e-3, 10**-2.5])
    assert above(1e-2, 1.0) == pytest.approx(10**-1.5)  # half a decade up, well below the edge
    assert above(0.0128, 0.0369) == 0.0369  # the edge is nearer: the reserve sits on it, not past it
    assert above(1e-2, 1.5e-2) is None  # within a quarter decade of the highest tried: no reserve


def _tune_cli(task_file: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", "from gradpilot.cli import main; main()", "tune", str(task_file), "--out", str(out),
            "--budget", "2", "--json"]


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
    study = optuna.load_study(study_name="gradpilot:lr_search", storage=_journal(out))
    scored = {t.number: dict(t.intermediate_values) for t in study.trials}
    assert "lr_search" not in before and "lr_range" in before and any(scored.values())
    resumed = subprocess.run(_tune_cli(task_file, out), capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = json.loads((out / "tune.json").read_text())
    for name, stage in before.items():
        assert after["stages"][name] == stage  # finished stages are read back, not run again
    study = optuna.load_study(study_name="gradpilot:lr_search", storage=_journal(out))
    for t in study.trials:  # a score reported before the kill is kept, not recomputed
        for rung, value in scored.get(t.number, {}).items():
            assert t.intermediate_values[rung] == value
    assert len({(t.params["lr"], t.params["micro_batch"]) for t in study.trials}) == len(study.trials)
    assert json.loads(resumed.stdout)["plan"] == json.loads(whole.stdout)["plan"]  # as if never killed


def _journal(out: Path) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(out / "trials.journal")))


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
    from gradpilot.batch.finder import estimate_noise_scale

    with pytest.raises(GradpilotError, match="not measurable"):  # the absolute reference: the estimate fails here
        estimate_noise_scale(converged_regression(), small_batch=8, big_batch=128, batches=8, seed=0)
    with pytest.warns(UserWarning, match="noise scale could not be measured.*keeps the task's batch 32"):
        result = tune(converged_regression(), out_dir=tmp_path, budget=20)  # a budget the batch trials fit in
    batch = {s.name: s for s in result.stages}["batch"]
    assert batch.decision.batches == (32,) and batch.evidence.noise_scale is None
    assert batch.why.startswith("the task's batch 32 is kept: the gradient noise scale could not be measured")
    assert result.plan["per_device_train_batch_size"] == 32 and result.spent_items <= 20


def test_more_workers_than_cores_are_capped_with_a_warning(monkeypatch):
    from gradpilot.tuning import driver as tune_module

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


def test_a_metric_that_is_always_nan_ends_in_one_line_and_no_model(tmp_path):
    task = small_task(n=256, epochs=2)
    nan_metric = Task(**{**task.__dict__, "metric": lambda _out, _y: float("nan")})
    with pytest.raises(GradpilotError, match=r"NaN or inf.*Task\.metric"):
        tune(nan_metric, out_dir=tmp_path)
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "plan.yaml").exists()
    record = (tmp_path / "tune.json").read_text()
    assert "NaN" not in record and json.loads(record)["stages"]["clock"]  # strict JSON: NaN written as null


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_a_fixed_lr_that_is_not_a_positive_finite_number_is_refused(tmp_path, value):
    with pytest.raises(GradpilotError, match="learning_rate must be a positive finite number"):
        tune(small_task(), out_dir=tmp_path, fixed={"lr": value})


@pytest.mark.parametrize("budget", [3.0, 2.0])
def test_a_one_epoch_fine_tune_is_tuned_within_its_budget(tmp_path, budget):
    task = small_task(n=512, epochs=1)  # 16 steps a run: fewer than a usual range test
    train = Counting(task.train_data)
    result = tune(Task(**{**task.__dict__, "train_data": train}), out_dir=tmp_path, budget=budget)
    assert result.spent_items <= budget
    read = train.reads - _fingerprint._SAMPLES  # every item read to train: the data digest aside
    assert read <= budget * 512  # the absolute count
    assert read == pytest.approx(result.spent_items * 512, rel=0.02)  # tune's count is the real one
    assert result.plan["num_train_epochs"] == 1


def test_a_budget_far_beyond_what_tune_can_use_is_not_spent(tmp_path):
    result = tune(small_task(n=256, epochs=2), out_dir=tmp_path, budget=1e6)
    search = {s.name: s for s in result.stages}["lr_search"]
    # no candidate trains more than half a run, but for the least rung worth racing (4 steps) on one so short
    assert search.evidence.rungs == (128, 384) and max(search.evidence.rungs) <= max(256 * 2 / 2, 3 * 4 * 32)
    assert result.spent_items < 10  # the batch trials' fixed cost is 3 runs of so small a task


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
    task = small_task()
    before = {k: v.clone() for k, v in task.model.state_dict().items()}

    def stop(message, _spent):
        if message.startswith("lr "):  # the search's first short run
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(task, out_dir=tmp_path, budget=2, progress=stop)
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())
    assert tune(task, out_dir=tmp_path, budget=2).spent_items <= 2  # Ctrl-C, then the same call again


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


def test_with_a_constant_lr_the_branches_are_validations_and_the_best_sets_the_epochs(tmp_path):
    task = small_task(n=512, epochs=3)
    result = tune(task, out_dir=tmp_path, fixed={"lr": 3e-3, "batch_size": 32, "lr_scheduler_type": "constant"})
    epochs = {s.name: s for s in result.stages}["epochs"]
    branches = epochs.evidence.branches
    assert [b.epochs for b in branches] == [1, 2, 3] and all(b.decay == 0 for b in branches)
    best = max(branches, key=lambda b: (b.score, b.epochs))
    assert result.plan["num_train_epochs"] == best.epochs and result.metric == best.score
    assert result.plan["lr_scheduler_type"] == "constant" and result.plan["lr_scheduler_kwargs"] == {}


def test_the_best_branch_wins_and_of_equal_ones_the_longest():
    from gradpilot.schedules.factor import Wsd
    from gradpilot.tuning.state import BranchRecord
    from gradpilot.tuning.trunk import BranchDone, _winner

    def done(*scores):
        return tuple(BranchDone(BranchRecord(i + 1, 0, 1, 2, s, 0.0, Wsd()), (), ()) for i, s in enumerate(scores))

    assert _winner(done(0.5, 0.7, 0.6), higher=True) == 1
    assert _winner(done(0.5, 0.7, 0.6), higher=False) == 0
    assert _winner(done(0.7, 0.7, 0.6), higher=True) == 1  # equal: the longer one
    assert _winner(done(math.nan, 0.2), higher=True) == 1  # a NaN never wins


def test_a_tune_killed_in_the_trunk_redoes_no_branch(tmp_path):
    task = small_task()
    steps: list[str] = []

    def stop_at_the_second_branch(message, _spent):
        steps.append(message)
        if message.startswith("trunk") and sum(m.startswith("trunk") for m in steps) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(task, out_dir=tmp_path / "killed", progress=stop_at_the_second_branch)
    done = json.loads((tmp_path / "killed" / "runs" / "trunk.json").read_text())["branches"]
    assert len(done) == 1
    again: list[str] = []
    resumed = tune(task, out_dir=tmp_path / "killed", progress=lambda m, _s: again.append(m))
    assert sum(m.startswith("trunk") for m in again) == 2  # the second branch and the last: the first is not redone
    whole = tune(small_task(), out_dir=tmp_path / "whole")
    assert resumed.plan == whole.plan and resumed.metric == whole.metric  # as if never stopped


def test_the_plan_retrained_from_the_task_follows_the_trajectory_tune_trained(tuned, tmp_path):
    """Every output is an input: ``gradpilot train --plan`` replays tune's plan from the task's initial weights on
    the same engine — the same data order, warmup, stable phase and decay — step for step, so its final metric is
    tune.json's; its checkpoint is what ``probe`` reads and its log what ``diagnose`` reads."""
    import csv

    from typer.testing import CliRunner

    from gradpilot import diagnose, probe, read_log
    from gradpilot.cli import app

    result, out, _ = tuned
    file = tmp_path / "small.py"  # the tuned task in a task file, as a user would have it
    file.write_text("from tests.conftest import small_task\n\ndef task(seed=0):\n    return small_task(seed)\n")
    run = CliRunner().invoke(app, ["train", str(file), "--plan", str(out / "plan.yaml"), "--out", str(tmp_path / "run"),
                                   "--json"])
    assert run.exit_code == 0, run.output
    got = json.loads(run.stdout)
    assert got["metric"] == json.loads((out / "tune.json").read_text())["metric"] == result.metric
    assert got["epochs"] == result.plan["num_train_epochs"]

    def path(log):
        rows = list(csv.DictReader(log.read_text().splitlines()))
        return [(float(r["lr"]), float(r["train_loss"])) for r in rows if r["train_loss"]]

    assert path(tmp_path / "run" / "metrics.csv") == path(out / "runs" / "final" / "metrics.csv")
    assert probe(small_task(), tmp_path / "run", share=0.05).verdict in ("too high", "too low", "about right")
    assert probe(small_task(), out, share=0.05).learning_rate == pytest.approx(result.plan["learning_rate"])
    assert diagnose(read_log(tmp_path / "run")).lr_verdict and diagnose(read_log(out)).lr_verdict


def test_a_plan_at_another_batch_rescales_the_trainer_s_step_counts():
    """A trainer that evaluates every 6 optimizer steps at 16 steps an epoch: a plan at twice the batch has 8
    steps an epoch, so it evaluates every 3 — the same place in an epoch; at the same batch nothing is added."""
    import dataclasses

    from gradpilot.train.task import Cadence
    from gradpilot.tuning.plan import _cadence
    from gradpilot.tuning.state import Assumed

    task = dataclasses.replace(small_task(n=512), cadence=Cadence(steps={"eval_steps": 6, "save_steps": 12}))
    assert _cadence(task, Assumed(512, 1, 8, 4)) == {"eval_steps": 3, "save_steps": 6}
    assert _cadence(task, Assumed(512, 1, 16, 4)) == {}


def test_an_adapter_on_a_frozen_model_is_saved_alone(tmp_path):
    """What trains is what tune keeps: with the body frozen (as a LoRA leaves a pretrained model), the initial
    weights, the best branch and model.pt hold the head alone — and each reads back onto the model, and the probe
    reads model.pt."""
    from gradpilot import probe
    from gradpilot.train.state import load_weights

    task = small_task(n=512, epochs=2)
    for p in task.model[0].parameters():
        p.requires_grad_(False)
    result = tune(task, out_dir=tmp_path, budget=2)
    head = {"2.weight", "2.bias"}
    for path in (tmp_path / "runs" / "initial.pt", tmp_path / "model.pt"):
        assert set(torch.load(path, weights_only=True)) == head
    body = task.model[0].weight.detach().clone()
    again = small_task(n=512, epochs=2)
    for p in again.model[0].parameters():
        p.requires_grad_(False)
    load_weights(again.model, torch.load(tmp_path / "model.pt", weights_only=True))
    assert torch.equal(again.model[2].weight, result.model[2].weight) and torch.equal(again.model[0].weight, body)
    assert probe(again, tmp_path / "model.pt", share=0.05).learning_rate == pytest.approx(result.plan["learning_rate"])


def test_the_same_task_seed_and_budget_write_the_same_plan_under_any_load(tmp_path, monkeypatch):
    """No fixed clock here: the real one times the runs, and a busy machine makes them 2-5× slower. A budget in
    runs holds in items and validations, so both tunes decide alike, byte for byte."""
    from gradpilot.tuning.budget import FIXED_CLOCK

    monkeypatch.delenv(FIXED_CLOCK, raising=False)
    quiet = tune(small_task(), budget=2, out_dir=tmp_path / "quiet")
    burn = "import time\nend = time.time() + 120\nwhile time.time() < end: pass\n"
    load = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(3)]
    try:
        busy = tune(small_task(), budget=2, out_dir=tmp_path / "busy")
    finally:
        for p in load:
            p.kill()
    assert (tmp_path / "quiet" / "plan.yaml").read_bytes() == (tmp_path / "busy" / "plan.yaml").read_bytes()
    assert quiet.spent == busy.spent <= 2 and quiet.metric == busy.metric
    assert quiet.stages[0].decision.run_seconds != busy.stages[0].decision.run_seconds  # the clocks did differ


class Poisoned(Dataset):
    """A training set one of whose items is NaN: every model trained on it breaks at its first epoch."""

    def __init__(self, inner: Dataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, y = self.inner[i]
        return (torch.full_like(x, float("nan")) if i == 3 else x), y


def test_a_model_that_turns_nan_is_a_failure_not_a_plan(tmp_path):
    from gradpilot.train.seam import Score

    broken = Score.of(0.5, float("nan"), higher_is_better=True)  # NaN logits still score some accuracy
    assert broken.broken and not Score.of(0.5, 0.7, higher_is_better=True).broken
    assert not Score.of(0.5, float("nan"), higher_is_better=True, has_loss=False).broken  # no loss reported
    task = small_task(train=Poisoned(spirals(512, seed=0)))
    with pytest.raises(GradpilotError, match="broken: its validation loss or metric is NaN or inf"):
        tune(task, budget=2, out_dir=tmp_path / "fixed", fixed={"learning_rate": 1e-3, "scheduler": "constant"})
    assert not (tmp_path / "fixed" / "model.pt").exists() and not (tmp_path / "fixed" / "plan.yaml").exists()
    with pytest.raises(GradpilotError, match="NaN or inf at the range test's first step, before any learning rate"):
        tune(small_task(train=Poisoned(spirals(512, seed=0))), budget=2, out_dir=tmp_path / "searched")
    assert not (tmp_path / "searched" / "model.pt").exists()


def test_the_cost_paid_is_recorded_beside_the_budgeted_spend(tmp_path, monkeypatch):
    """A one-epoch task at budget 2 spends at most 2 runs; tune.json holds the whole command's wall seconds,
    within 15 % of a stopwatch around the command."""
    import time

    from gradpilot.tuning.budget import FIXED_CLOCK

    monkeypatch.delenv(FIXED_CLOCK, raising=False)
    one_epoch = small_task(epochs=1, n=2048)
    result = tune(one_epoch, budget=2, out_dir=tmp_path / "api")
    assert result.spent <= 2 and result.spent_items <= 2
    assert result.wall_seconds > 0 and math.isnan(result.process_seconds)  # a script: the call is the cost
    task_file = tmp_path / "task.py"
    task_file.write_text(tune_task_file(epochs=1))
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gradpilot.cli", "tune", str(task_file), "--out",
                           str(tmp_path / "cli"), "--budget", "2", "--json"], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != FIXED_CLOCK})
    stopwatch = time.perf_counter() - began
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "cli" / "tune.json").read_text())
    assert record["process_seconds"] == pytest.approx(stopwatch, rel=0.15)
    assert record["wall_seconds"] < record["process_seconds"]  # start-up and the task file's loading besides
    printed = json.loads(done.stdout)
    assert printed["process_seconds"] == pytest.approx(record["process_seconds"])


def test_an_overrun_is_said_in_one_line():
    from gradpilot.train.seam import Cost
    from gradpilot.tuning.record import overruns
    from gradpilot.tuning.state import TuneRecord

    held = TuneRecord({}, "", spent=Cost(training=19.0), spent_runs=1.9, budget_runs=2, run_seconds=10,
                      wall_seconds=21, process_seconds=22)
    assert overruns(held) == []
    over = TuneRecord({}, "", spent=Cost(training=19.0), spent_runs=2.3, budget_runs=2, run_seconds=10,
                      wall_seconds=40, process_seconds=45)
    said = overruns(over)
    assert len(said) == 2 and "2.30 runs of a 2-run budget" in said[0] and "45 s, 4.50 runs" in said[1]


def test_a_metric_whose_body_changed_under_the_same_name_is_refused(tmp_path):
    from gradpilot.examples import accuracy as first

    tune(small_task(), budget=1.5, out_dir=tmp_path)
    task = small_task()

    def accuracy(logits, targets):  # the same name, another body: top-1 error, not accuracy
        return 1.0 - first(logits, targets)

    task = Task(**{**{f: getattr(task, f) for f in ("model", "train_data", "val_data", "loss_fn", "optimizer", "lr",
                                                    "batch_size", "epochs", "name")},
                   "metric": accuracy, "higher_is_better": True})
    with pytest.raises(GradpilotError, match="metric_code"):
        tune(task, budget=1.5, out_dir=tmp_path)


def test_a_metric_declared_the_wrong_way_round_is_warned_of(tmp_path):
    task = small_task()
    task = Task(**{**{f: getattr(task, f) for f in ("model", "train_data", "val_data", "loss_fn", "optimizer", "lr",
                                                    "batch_size", "epochs", "name", "metric")},
                   "higher_is_better": False})  # an accuracy said to be better lower
    with pytest.warns(UserWarning, match="is higher_is_better right"):
        tune(task, budget=1.5, out_dir=tmp_path / "wrong")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        tune(small_task(), budget=1.5, out_dir=tmp_path / "right")  # the right way round: no word of it


def test_the_search_leaves_its_bracket_where_its_lowest_lr_wins(tmp_path):
    """A winner at the edge of the LRs tried says the best lies past it: the reserve half a decade beyond races
    too. Here the validation labels are the training labels shifted, so the less a run learns the better it
    scores: the lowest LR of the grid wins the first rung, and the reserve below it runs and wins."""
    import warnings

    from gradpilot.tuning.halving import Candidate, Plan

    plan = Plan((Candidate(1e-3, 32), Candidate(1e-2, 32), Candidate(1e-4, 32), Candidate(1e-4 / 10**0.5, 32)),
                (100,), 0.2, 10**6, ((2, 3),))
    assert plan.first() == [0, 1, 2]
    assert plan.beyond({0: 0.5, 1: 0.4, 2: 0.7}, higher_is_better=True) == [3]  # the lowest LR won: go past it
    assert plan.beyond({0: 0.9, 1: 0.4, 2: 0.7}, higher_is_better=True) == []  # a winner inside the bracket
    assert plan.beyond({0: float("nan")}, higher_is_better=True) == []
    assert Plan.read(plan.note()) == plan
    task = small_task()
    x, y = spirals(256, seed=1).tensors
    shifted = torch.utils.data.TensorDataset(x, (y + 1) % 3)  # learning the task makes it worse here
    task = Task(**{**task.__dict__, "val_data": shifted})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = tune(task, budget=3, out_dir=tmp_path)
    search = next(s for s in result.stages if s.name == "lr_search")
    trials = search.evidence.trials
    lowest_planned = sorted(t.lr for t in trials)[1]  # the grid's lowest; below it, the reserve
    reserve = min(trials, key=lambda t: t.lr)
    assert reserve.lr == pytest.approx(lowest_planned / 10**0.5) and reserve.scores  # it raced
    assert search.decision.learning_rate <= lowest_planned  # the plan is not held inside the first bracket
