"""More cases for ``bad_input_audit.py``: what a new user does to ``gradpilot tune`` and its neighbours — bad
``--fix`` values and flags, outputs that are folders, a changed task or storage on a folder that holds a tune,
tasks too small or odd for the budget, schedules whose options would not decay, range tests too long to
finish, task files that print or return NaN, damaged logs among good ones. The shapes are those of
``audit_cases``: a command-line case ``{"group", "name", "args", "expect"}``, an API case ``{"group", "name",
"call", "expect"}``.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from audit_cases import _ok_if, _valid_json, _write

ROOT = Path(__file__).resolve().parent.parent

TUNE_TASK = """
import torch
from torch import nn
from torch.utils.data import TensorDataset
from gradpilot import Task
from gradpilot.examples import accuracy, spirals

def task(seed: int = 0) -> Task:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    kwargs = dict(model=model, train_data=spirals({items}, seed=seed), val_data=spirals(128, seed=seed + 1),
                  loss_fn=nn.CrossEntropyLoss(), metric=accuracy, higher_is_better=True, optimizer="adamw",
                  optimizer_kwargs={{"weight_decay": 0.01}}, lr=1e-3, batch_size=32, epochs={epochs})
    {change}
    return Task(**kwargs)
"""

# each changes one thing a resumed tune must notice
RESUME_CHANGES = {
    "another weight decay": "kwargs['optimizer_kwargs'] = {'weight_decay': 0.1}",
    "SGD with momentum instead of AdamW": "kwargs['optimizer'] = 'sgd'; kwargs['optimizer_kwargs'] = {'momentum': 0.9}",
    "other data of the same length": "kwargs['train_data'] = spirals(256, seed=seed + 7)",
    "other validation data": "kwargs['val_data'] = spirals(128, seed=seed + 9)",
    "another metric": "kwargs['metric'] = lambda out, y: -float(nn.functional.cross_entropy(out, y))",
    "another loss": "kwargs['loss_fn'] = nn.CrossEntropyLoss(label_smoothing=0.1)",
    "higher_is_better flipped": "kwargs['higher_is_better'] = False",
    "another initialisation": "torch.manual_seed(seed + 99); kwargs['model'] = nn.Sequential(nn.Linear(2, 16), "
                              "nn.ReLU(), nn.Linear(16, 3))",
    "another model layout": "kwargs['model'] = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 3))",
    "another task LR": "kwargs['lr'] = 3e-3",
    "another task batch": "kwargs['batch_size'] = 16",
    "another number of epochs": "kwargs['epochs'] = 3",
    "clipping added": "kwargs['max_grad_norm'] = 1.0",
}


def _task(tasks: Path, name: str, *, items: int = 256, epochs: int = 2, change: str = "") -> Path:
    return _write(tasks / f"{name}.py", TUNE_TASK.format(items=items, epochs=epochs, change=change))


def _exits_ok_with(*words: str) -> Callable[[int, str, str], tuple[bool, str]]:
    return _ok_if(lambda rc, out, err: rc == 0 and all(w in out + err for w in words), f"exit 0, says {words}")


def _json_plan(check: Callable[[dict[str, Any]], bool], why: str) -> Callable[[int, str, str], tuple[bool, str]]:
    return _ok_if(lambda rc, out, _err: rc == 0 and _valid_json(out) and check(json.loads(out)), why)


def _finished_tune(base: Path, task: Path) -> Path:
    """A folder holding a finished tune, made once, before the cases that resume it run."""
    out = base / "tuned"
    if not (out / "tune.json").exists():
        subprocess.run([sys.executable, "-m", "gradpilot.cli", "tune", str(task), "--out", str(out), "--budget", "2",
                        "--json"], check=True, capture_output=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    return out


def cli_cases(base: Path) -> list[dict[str, Any]]:
    tasks, out = base / "tune-tasks", base / "tune-out"
    good = _task(tasks, "good")
    cases: list[dict[str, Any]] = []

    def case(group: str, name: str, args: list[str], expect: Any = "error", **extra: Any) -> None:
        cases.append({"group": group, "name": name, "args": args, "expect": expect, **extra})

    tune = ["tune", str(good), "--out"]
    for value in ("lr=inf", "lr=nan", "lr=-1", "lr=0", "lr=fast", "batch_size=0", "batch_size=2.5",
                  "batch_size=100000", "epochs=0", "epochs=-3", "epochs=1.5", "lr_scheduler_type=cosin",
                  "gradient_accumulation_steps=0", "momentum=0.9", "lr", "=0.1", "lr="):
        case("tune --fix", value, [*tune, str(out / "fix"), "--fix", value])
    for flags, name in ((["--budget", "0"], "--budget 0"), (["--budget", "-1"], "--budget -1"),
                        (["--budget", "nan"], "--budget nan"), (["--budget", "inf"], "--budget inf"),
                        (["--budget", "0.05"], "a budget under the range test and one epoch"),
                        (["--n-jobs", "0"], "--n-jobs 0"), (["--n-jobs", "2", "--storage", "sqlite:///x.db"],
                                                            "--n-jobs with a shared storage"),
                        (["--backend", "dask"], "--backend dask"), (["--backend", "ray", "--n-jobs", "2"],
                                                                     "--backend ray with --n-jobs"),
                        (["--study", "a:b"], "--study with ':'"), (["--study", ""], "an empty --study"),
                        (["--cooldown", "1"], "--cooldown 1"), (["--cooldown", "-0.1"], "--cooldown -0.1"),
                        (["--storage", "postgresql://nobody@127.0.0.1:1/none"], "a database that does not answer"),
                        (["--storage", "bogus://x"], "a storage URL of no known kind"),
                        (["--seed", "x"], "--seed text")):
        case("tune flags", name, [*tune, str(out / "flags"), *flags])
    case("tune outputs", "--out is a file", [*tune, str(_write(out / "a-file", "x"))])
    case("tune outputs", "--out under /proc", [*tune, "/proc/gp-tune"])
    for name in ("report.html", "model.pt", "plan.yaml", "tune.json", "runs/initial.pt"):
        folder = out / f"dir-{name.replace('/', '-')}"
        (folder / name).mkdir(parents=True, exist_ok=True)
        case("tune outputs", f"{name} is a folder", [*tune, str(folder)])
    for name, change, items in (("a training set of 5 items", "", 5),
                                ("no validation data", "kwargs['val_data'] = None", 256),
                                ("a model that does not fit the data", "kwargs['model'] = nn.Linear(3, 3)", 256),
                                ("sys.exit in task()", "import sys; sys.exit(1)", 256)):
        case("tune task", name, ["tune", str(_task(tasks, f"t-{len(cases)}", items=items, change=change)),
                                 "--out", str(out / f"task-{len(cases)}")])
    case("tune task", "a task file that prints, with --json",
         ["tune", str(_task(tasks, "prints", change="print('hello from the task')")), "--out", str(out / "p"),
          "--json", "--budget", "2"], _json_plan(lambda d: "learning_rate" in d["plan"], "stdout is the JSON alone"))
    case("tune task", "a metric that is always NaN",
         ["tune", str(_task(tasks, "nan-metric", change="kwargs['metric'] = lambda o, y: float('nan')")),
          "--out", str(out / "nm"), "--budget", "2"], _exits_ok_with("warning:", "not finite"))
    case("tune task", "a one-epoch fine-tune at budget 2",
         ["tune", str(_task(tasks, "one-epoch", items=512, epochs=1)), "--out", str(out / "one"), "--budget", "2",
          "--json"], _json_plan(lambda d: d["spent_item_runs"] <= 2, "spends at most its budget in items (its "
                                "seconds are milliseconds: their measure is noise)"))
    case("tune task", "a budget of 10^9 runs",
         ["tune", str(good), "--out", str(out / "huge"), "--budget", "1e9", "--json"],
         _json_plan(lambda d: d["spent_runs"] < 20, "spends what the task needs (under 20 runs), not the budget"))
    case("tune task", "--n-jobs 64 on this machine", ["tune", str(good), "--out", str(out / "many"), "--budget", "2",
                                                      "--n-jobs", "64"], _exits_ok_with("warning:", "cores"))
    case("tune task", "a noise scale that cannot be measured (a converged model under SGD + momentum)",
         ["tune", str(_write(tasks / "converged.py", CONVERGED)), "--out", str(out / "conv"), "--json"],
         _json_plan(lambda d: d["plan"]["per_device_train_batch_size"] == 32, "keeps the task's batch"))
    cases += _resume_cases(base, tasks, good)
    cases += _schedule_and_range_cases(base, tasks)
    return cases


CONVERGED = """
import torch
from torch import nn
from torch.utils.data import TensorDataset
from gradpilot import Task

def task(seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.5 * torch.randn(512, 1, generator=g)
    model = nn.Linear(4, 1)
    sol = torch.linalg.lstsq(torch.cat([x, torch.ones(512, 1)], 1), y).solution
    with torch.no_grad():
        model.weight.copy_(sol[:4].T)
        model.bias.copy_(sol[4])
    return Task(model=model, train_data=TensorDataset(x, y), val_data=TensorDataset(x, y), loss_fn=nn.MSELoss(),
                optimizer="sgd", optimizer_kwargs={"momentum": 0.9}, lr=0.01, batch_size=32, epochs=6)
"""


def _resume_cases(base: Path, tasks: Path, good: Path) -> list[dict[str, Any]]:
    """A finished tune's folder given a changed task, other arguments, another storage, or a deleted trials
    file: each refused in one line naming what changed, never answered with the old plan."""
    tuned = _finished_tune(base, good)
    cases: list[dict[str, Any]] = []
    again = ["tune", str(good), "--out", str(tuned), "--budget", "2"]
    cases.append({"group": "tune resume", "name": "the same command again", "args": [*again, "--json"],
                  "expect": _json_plan(lambda d: "learning_rate" in d["plan"], "the same plan, nothing re-run")})
    for name, change in RESUME_CHANGES.items():
        changed = _task(tasks, f"changed-{len(cases)}", change=change)
        cases.append({"group": "tune resume", "name": name,
                      "args": ["tune", str(changed), "--out", str(tuned), "--budget", "2"], "expect": "error"})
    for name, extra in (("another --budget", ["--budget", "3"]), ("another --seed", ["--seed", "1"]),
                        ("another --cooldown", ["--cooldown", "0.1"]), ("a --fix added", ["--fix", "epochs=3"]),
                        ("another --study", ["--study", "other"]),
                        ("another --storage", ["--storage", f"sqlite:///{base / 'elsewhere.db'}"])):
        cases.append({"group": "tune resume", "name": name, "args": [*again, *extra], "expect": "error"})
    cases.append({"group": "tune resume", "name": "--n-jobs 2 (the same journal file)", "args": [*again, "--n-jobs", "2",
                                                                                             "--json"],
                  "expect": _json_plan(lambda d: "learning_rate" in d["plan"], "the same plan, nothing re-run")})
    gone = base / "tuned-without-trials"
    shutil.copytree(tuned, gone, dirs_exist_ok=True)
    (gone / "trials.journal").unlink(missing_ok=True)
    cases.append({"group": "tune resume", "name": "trials.journal deleted",
                  "args": ["tune", str(good), "--out", str(gone), "--budget", "2"], "expect": "error"})
    damaged = base / "tuned-damaged"
    shutil.copytree(tuned, damaged, dirs_exist_ok=True)
    (damaged / "runs" / "initial.pt").write_bytes(b"half a file")
    cases.append({"group": "tune resume", "name": "a damaged runs/initial.pt",
                  "args": ["tune", str(good), "--out", str(damaged), "--budget", "2"], "expect": "error"})
    cases.append({"group": "tune resume", "name": "report.html rebuilt", "args": ["report", str(tuned)],
                  "expect": _exits_ok_with("Report written to")})
    return cases


def _schedule_and_range_cases(base: Path, tasks: Path) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    plot = str(base / "schedule.png")
    for name, args in {"step_size=0": ["step", "--option", "step_size=0"],
                       "step_size=-2": ["step", "--option", "step_size=-2"],
                       "gamma=0": ["step", "--option", "gamma=0"], "gamma=-0.5": ["step", "--option", "gamma=-0.5"],
                       "cosine eta_min=1 (above the LR)": ["cosine", "--option", "eta_min=1"],
                       "cosine eta_min = the LR": ["cosine", "--option", "eta_min=0.001"],
                       "cosine eta_min=-1": ["cosine", "--option", "eta_min=-1"],
                       "warmup_cosine eta_min=1": ["warmup_cosine", "--option", "eta_min=1"],
                       "cosine_with_min_lr min_lr=1": ["cosine_with_min_lr", "--option", "min_lr=1"],
                       "cosine_with_min_lr min_lr_rate=1": ["cosine_with_min_lr", "--option", "min_lr_rate=1"],
                       "cosine_with_min_lr min_lr_rate=-0.1": ["cosine_with_min_lr", "--option", "min_lr_rate=-0.1"],
                       "cosine_with_min_lr without a floor": ["cosine_with_min_lr"],
                       "cosine_with_min_lr with both floors": ["cosine_with_min_lr", "--option", "min_lr=0",
                                                               "--option", "min_lr_rate=0.1"],
                       "linear warmup_steps=2000 of 1000": ["linear", "--option", "warmup_steps=2000"],
                       "linear warmup_steps=1000 of 1000": ["linear", "--option", "warmup_steps=1000"],
                       "linear warmup_steps=-1": ["linear", "--option", "warmup_steps=-1"],
                       "linear warmup_steps=2.5": ["linear", "--option", "warmup_steps=2.5"],
                       "constant_with_warmup warmup_steps=5000": ["constant_with_warmup", "--option",
                                                                  "warmup_steps=5000"],
                       "cosine_with_min_lr warmup_steps=1000": ["cosine_with_min_lr", "--option", "min_lr_rate=0.01",
                                                                "--option", "warmup_steps=1000"],
                       }.items():
        cases.append({"group": "schedule options", "name": name,
                      "args": ["schedule", args[0], "--steps", "1000", *args[1:], "--plot", plot], "expect": "error"})
    for name, args, lowest in (("cosine eta_min below the LR", ["cosine", "--option", "eta_min=0.0005"], "0.0005"),
                               ("linear warmup_steps=100 of 1000", ["linear", "--option", "warmup_steps=100"], "0"),
                               ("cosine_with_min_lr min_lr_rate=0.01",
                                ["cosine_with_min_lr", "--option", "min_lr_rate=0.01"], "1e-05")):
        cases.append({"group": "schedule options", "name": name,
                      "args": ["schedule", args[0], "--steps", "1000", *args[1:], "--plot", plot],
                      "expect": _exits_ok_with("Curve written to", lowest)})
    good = _task(tasks, "range")
    for name, args in {"--num-steps 10^8": ["--num-steps", "100000000"], "--num-steps 10001": ["--num-steps", "10001"],
                       "--accumulation-steps 10^6": ["--accumulation-steps", "1000000"],
                       "1001 steps × 100 micro-batches": ["--num-steps", "1001", "--accumulation-steps", "100"]}.items():
        cases.append({"group": "find-lr length", "name": name, "args": ["find-lr", str(good), "--json", *args],
                      "expect": "error"})
    cases.append({"group": "find-lr length", "name": "a task file that prints, with --json",
                  "args": ["find-lr", str(_task(tasks, "printing", change="print('hello')")), "--json",
                           "--num-steps", "20"],
                  "expect": _ok_if(lambda rc, out, _e: rc == 0 and _valid_json(out), "stdout is the JSON alone")})
    nan = _task(tasks, "nan-loss", change="kwargs['loss_fn'] = lambda out, y: out.sum() * float('nan')")
    cases.append({"group": "find-batch-size", "name": "a loss that is NaN",
                  "args": ["find-batch-size", str(nan), "--max-batch-size", "16"],
                  "expect": _exits_ok_with("Largest micro-batch that fits: 16", "warning: no gradient noise scale")})
    cases += _diagnose_more(base / "more-logs")
    return cases


def _diagnose_more(logs: Path) -> list[dict[str, Any]]:
    bad = _write(logs / "t.csv", "step,loss\n" + "".join(f"{i},1.0\n" for i in range(1, 99)) + "99,oops\n")
    for version in (0, 2):
        rows = "".join(f"{s},{2.0 * 0.99 ** s}\n" for s in range(200))
        _write(logs / "runs" / "lightning_logs" / f"version_{version}" / "metrics.csv", "step,train_loss\n" + rows)
    _write(logs / "runs" / "lightning_logs" / "version_1" / "metrics.csv", "step,train_loss\n1,2.0\n2,oops\n")
    return [
        {"group": "diagnose more", "name": "an error on line 100 (':100:' is not an emoji)", "args": ["diagnose", str(bad)],
         "expect": _ok_if(lambda rc, _o, err: rc == 2 and "t.csv:100:" in err and "\U0001f4af" not in err,
                          "says t.csv:100:")},
        {"group": "diagnose more", "name": "--all with one damaged run among good ones",
         "args": ["diagnose", str(logs / "runs"), "--all", "--json"],
         "expect": _ok_if(lambda rc, out, _e: rc == 2 and _valid_json(out) and len(json.loads(out)) == 3,
                          "diagnoses the other two, says which one failed, exit 2")},
    ]


def api_cases() -> list[dict[str, Any]]:
    c: list[dict[str, Any]] = []

    def case(group: str, name: str, call: Callable[[Path], Any], expect: Any = "error") -> None:
        c.append({"group": group, "name": name, "call": call, "expect": expect})

    for name, kwargs in {"budget=nan": {"budget": math.nan}, "budget=inf": {"budget": math.inf},
                         "budget=0": {"budget": 0.0}, "n_jobs=0": {"n_jobs": 0}, "n_jobs=1.5": {"n_jobs": 1.5},
                         "cooldown=1": {"cooldown": 1.0}, "study='a:b'": {"study": "a:b"},
                         "backend='dask'": {"backend": "dask"}, "fixed lr=inf": {"fixed": {"lr": math.inf}},
                         "fixed lr='x'": {"fixed": {"lr": "x"}}, "fixed an unknown name": {"fixed": {"lrate": 0.1}},
                         "fixed batch over the data": {"fixed": {"batch_size": 10**6}},
                         "fixed epochs=0": {"fixed": {"epochs": 0}}}.items():
        case("tune API", name, lambda w, k=kwargs: _tune(w, **k))
    case("tune API", "not a Task", lambda w: _module("tuning").tune("task.py", out_dir=w))
    for name, (schedule, options) in {"step_size=0": ("step", {"step_size": 0}),
                                      "eta_min above the LR": ("cosine", {"eta_min": 1.0}),
                                      "min_lr above the LR": ("cosine_with_min_lr", {"min_lr": 1.0}),
                                      "warmup past the run": ("linear", {"warmup_steps": 200}),
                                      "min_lr_rate=2": ("cosine_with_min_lr", {"min_lr_rate": 2.0})}.items():
        case("schedules API", name, lambda _w, s=schedule, o=options: _schedule(s, **o))
    case("errors API", "first_line of a MemoryError()", lambda _w: _module("errors").first_line(MemoryError()),
         lambda v: (v == "MemoryError", repr(v)))
    case("batch size", "a real MemoryError() in a trial", _memory_error_search,
         lambda r: (r.batch_size == 20, f"batch {r.batch_size}"))
    case("files API", "an output path that is a folder",
         lambda w: ((w / "out.json").mkdir(), _module("_files").write_json(w / "out.json", {})))
    case("scaling", "noise scale from NaN norms", lambda _w: _module("scaling").noise_scale(math.nan, 1.0, 8, 128))
    return c


def _module(name: str) -> Any:
    return importlib.import_module(f"gradpilot.{name}")


def _tune(work: Path, **kwargs: Any) -> Any:
    import torch
    from torch import nn

    from gradpilot import Task, tune
    from gradpilot.examples import accuracy, spirals

    torch.manual_seed(0)
    task = Task(model=nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3)), train_data=spirals(256, seed=0),
                val_data=spirals(64, seed=1), loss_fn=nn.CrossEntropyLoss(), metric=accuracy, higher_is_better=True,
                batch_size=32, epochs=2)
    return tune(task, out_dir=work, **kwargs).plan


def _schedule(name: str, **options: Any) -> Any:
    import torch

    from gradpilot.schedules import builders as schedules

    return schedules.make_schedule(name, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1),
                                   total_steps=100, **options)


def _memory_error_search(_work: Path) -> Any:
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from gradpilot import find_batch_size

    class HostOOM(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if len(x) > 20:
                raise MemoryError
            return super().forward(x)

    model = HostOOM(4, 2)
    data = TensorDataset(torch.randn(300, 4), torch.randint(0, 2, (300,)))
    return find_batch_size(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), data)
