"""The cases of ``bad_input_audit.py``: what users get wrong, and what a good answer to each is.

A command-line case is ``{"group", "name", "args", "expect"}`` where ``expect`` is ``"error"`` (one line,
exit 2) or a check ``(rc, stdout, stderr) -> (ok, why)``; ``keeps`` names text a finished result must still
show. An API case is ``{"group", "name", "call", "expect"}`` with ``call(workdir)`` and ``expect`` either
``"error"`` or a check ``value -> (ok, why)``.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

GOOD_TASK = """
import torch
from torch import nn
from torch.utils.data import TensorDataset
import gradpilot

def task(seed: int = 0) -> gradpilot.Task:
    torch.manual_seed(seed)
    x = torch.randn(256, 4)
    kwargs = dict(model=nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)),
                  train_data=TensorDataset(x, (x[:, 0] > 0).long()), val_data=TensorDataset(x[:64], (x[:64, 0] > 0).long()),
                  loss_fn=nn.CrossEntropyLoss(), batch_size=16, lr=1e-3)
    {change}
    return gradpilot.Task(**kwargs)
"""

TASK_CHANGES = {
    "empty training set": "kwargs['train_data'] = TensorDataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))",
    "empty validation set": "kwargs['val_data'] = []",
    "a missing field": "del kwargs['loss_fn']",
    "a frozen model": "kwargs['model'].requires_grad_(False)",
    "lr = -1": "kwargs['lr'] = -1",
    "lr = nan": "kwargs['lr'] = float('nan')",
    "lr = '1e-3' (text)": "kwargs['lr'] = '1e-3'",
    "batch_size = 0": "kwargs['batch_size'] = 0",
    "batch_size = 2.5": "kwargs['batch_size'] = 2.5",
    "epochs = nan": "kwargs['epochs'] = float('nan')",
    "unknown optimizer name": "kwargs['optimizer'] = 'lion'",
    "optimizer options it refuses": "kwargs['optimizer_kwargs'] = {'betas': 0.9}",
    "optimizer option that does not exist": "kwargs['optimizer'] = 'sgd'; kwargs['optimizer_kwargs'] = {'nesterov': True}",
    "a model that is not a Module": "kwargs['model'] = 'resnet18'",
    "a loss that is not callable": "kwargs['loss_fn'] = 'cross_entropy'",
    "a loss that is not a scalar": "kwargs['loss_fn'] = nn.CrossEntropyLoss(reduction='none')",
    "a model whose input size is wrong": "kwargs['model'] = nn.Linear(3, 2)",
    "sys.exit(0) in the file": "import sys; sys.exit(0)",
    "an exception in the file": "raise RuntimeError('the data is not there')",
}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _ok_if(predicate: Callable[[int, str, str], bool], why: str) -> Callable[[int, str, str], tuple[bool, str]]:
    return lambda rc, out, err: (predicate(rc, out, err), why if predicate(rc, out, err) else f"{why}: not so (exit {rc})")


def _valid_json(text: str) -> bool:
    def refuse(name: str) -> Any:
        raise ValueError(name)

    try:
        json.loads(text, parse_constant=refuse)
        return True
    except ValueError:
        return False


def cli_cases(base: Path) -> list[dict[str, Any]]:
    """Every command-line case; files they need are written under ``base``."""
    tasks = base / "tasks"
    good = _write(tasks / "good.py", GOOD_TASK.replace("{change}", ""))
    cases: list[dict[str, Any]] = []

    def case(group: str, name: str, args: list[str], expect: Any = "error", **extra: Any) -> None:
        cases.append({"group": group, "name": name, "args": args, "expect": expect, **extra})

    # task files, through find-lr
    case("task file", "a file that does not exist", ["find-lr", str(tasks / "nope.py")])
    case("task file", "a folder given as the file", ["find-lr", str(tasks)])
    case("task file", "not a .py file", ["find-lr", str(_write(tasks / "task.txt", "x"))])
    case("task file", "a syntax error", ["find-lr", str(_write(tasks / "syntax.py", "def task(:\n"))])
    case("task file", "no task()", ["find-lr", str(_write(tasks / "notask.py", "x = 1\n"))])
    case("task file", "task() without a seed", ["find-lr", str(_write(tasks / "noseed.py", "def task():\n    pass\n"))])
    case("task file", "task() returns an int", ["find-lr", str(_write(tasks / "int.py", "def task(seed=0):\n    return 1\n"))])
    for i, (name, change) in enumerate(TASK_CHANGES.items()):
        case("task file", name, ["find-lr", str(_write(tasks / f"t{i}.py", GOOD_TASK.replace("{change}", change)))])

    # find-lr options
    for name, args in {"--start-lr 0": ["--start-lr", "0"], "--start-lr nan": ["--start-lr", "nan"],
                       "--end-lr below --start-lr": ["--start-lr", "1", "--end-lr", "0.1"],
                       "--num-steps 5": ["--num-steps", "5"], "--num-steps -1": ["--num-steps", "-1"],
                       "--num-steps 2.5": ["--num-steps", "2.5"], "--accumulation-steps 0": ["--accumulation-steps", "0"],
                       "--rule bogus": ["--rule", "bogus"], "--family bogus": ["--family", "bogus"],
                       "an unknown option": ["--learning-rate", "3"],
                       "--plot is a folder": ["--plot", str(base)], "--plot under /proc": ["--plot", "/proc/x.png"],
                       "--plot inside a file": ["--plot", str(good / "x.png")]}.items():
        case("find-lr", name, ["find-lr", str(good), *args])
    case("find-lr", "--json in a folder that cannot be written", ["find-lr", str(good), "--json", "--num-steps", "20"],
         _ok_if(lambda rc, out, _err: rc == 0 and _valid_json(out), "prints JSON, writes no picture"), cwd=Path("/proc"))

    # plan
    for name, args in {"no --max-micro-batch": [], "--max-micro-batch 0": ["--max-micro-batch", "0"],
                       "--target -4": ["--max-micro-batch", "8", "--target", "-4"],
                       "--world-size 0": ["--max-micro-batch", "8", "--world-size", "0"],
                       "--lr nan": ["--max-micro-batch", "8", "--lr", "nan", "--batch-size", "8"],
                       "--lr without --batch-size": ["--max-micro-batch", "8", "--lr", "0.1"],
                       "--rule bogus": ["--max-micro-batch", "8", "--lr", "0.1", "--batch-size", "8", "--rule", "x"],
                       "an optimizer it cannot place (Lion) under rule auto":
                           ["--max-micro-batch", "8", "--lr", "0.1", "--batch-size", "8", "--optimizer", "lion"],
                       "--total-steps 0": ["--max-micro-batch", "8", "--lr", "0.1", "--batch-size", "8", "--total-steps", "0"],
                       }.items():
        case("plan", name, ["plan", *args])
    case("plan", "a huge target (10^8) with micro-batch 1", ["plan", "--max-micro-batch", "1", "--target", "100000000"],
         _ok_if(lambda rc, out, _err: rc == 0 and "100000000" in out, "answers at once"))

    # schedule
    for name, args in {"an unknown name": ["cosin", "--steps", "10"], "--steps 0": ["cosine", "--steps", "0"],
                       "--steps 10^8": ["cosine", "--steps", "100000000"],
                       "--option without =": ["warmup_cosine", "--steps", "10", "--option", "warmup"],
                       "--option with text": ["warmup_cosine", "--steps", "10", "--option", "warmup_ratio=x"],
                       "--option the schedule does not take": ["cosine", "--steps", "10", "--option", "gamma=0.5"],
                       "warmup longer than the run": ["warmup_cosine", "--steps", "10", "--option", "warmup_ratio=2"],
                       "plateau without --metrics": ["plateau", "--steps", "10"],
                       "--metrics with text": ["plateau", "--steps", "2", "--metrics", "a,b"],
                       "--plot under /proc": ["cosine", "--steps", "10", "--plot", "/proc/s.png"],
                       "--lr -1": ["cosine", "--steps", "10", "--lr", "-1"]}.items():
        case("schedule", name, ["schedule", *args])
    case("schedule", "a million steps", ["schedule", "cosine", "--steps", "1000000", "--plot", str(base / "s.png")],
         _ok_if(lambda rc, out, _err: rc == 0 and "999999" in out, "draws it"))

    # find-batch-size
    for name, args in {"--max-memory-mib -1": ["--max-memory-mib", "-1"], "--max-memory-mib nan": ["--max-memory-mib", "nan"],
                       "--max-batch-size 0": ["--max-batch-size", "0"], "--start 0": ["--start", "0"]}.items():
        case("find-batch-size", name, ["find-batch-size", str(good), *args])
    case("find-batch-size", "no limit on CPU (the README's example)", ["find-batch-size", str(good), "--max-memory-mib", "4000"],
         _ok_if(lambda rc, out, _err: rc == 0 and "fits: 256" in out and "dataset's size" in " ".join(out.split()),
                "stops at the dataset's 256 items and says so"))

    cases += _diagnose_cases(base / "logs")
    cases += _probe_cases(base / "probe", good)
    return cases


def _probe_cases(work: Path, good: Path) -> list[dict[str, Any]]:
    """``gradpilot probe`` on checkpoints that are missing, damaged, foreign or of another model."""
    import torch

    import gradpilot
    from gradpilot.task_file import load_task

    task = load_task(good)
    gradpilot.fit(task, task.make_optimizer(1e-3), epochs=2, checkpoint_dir=work / "run")
    other = GOOD_TASK.replace("{change}", "kwargs['model'] = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))")
    novalid = GOOD_TASK.replace("{change}", "kwargs['val_data'] = None")
    damaged = _write(work / "damaged" / "last.pt", "not a checkpoint")
    (work / "empty").mkdir(parents=True, exist_ok=True)
    weights = work / "weights.pt"
    torch.save(task.model.state_dict(), weights)
    run = str(work / "run")
    out: list[dict[str, Any]] = []
    for name, args in {
        "no --checkpoint": [str(good)], "a checkpoint that does not exist": [str(good), "--checkpoint", str(work / "x")],
        "a folder without last.pt": [str(good), "--checkpoint", str(work / "empty")],
        "a file that is no checkpoint": [str(good), "--checkpoint", str(good)],
        "a weights file, not a run's checkpoint": [str(good), "--checkpoint", str(weights)],
        "a damaged last.pt": [str(good), "--checkpoint", str(damaged)],
        "--share 0": [str(good), "--checkpoint", run, "--share", "0"],
        "--share 2": [str(good), "--checkpoint", run, "--share", "2"],
        "--lr -1": [str(good), "--checkpoint", run, "--lr", "-1"],
        "a checkpoint of another model": [str(_write(work / "other.py", other)), "--checkpoint", run],
        "a task without validation data": [str(_write(work / "novalid.py", novalid)), "--checkpoint", run],
    }.items():
        out.append({"group": "probe", "name": name, "args": ["probe", *args], "expect": "error"})
    out.append({"group": "probe", "name": "a good checkpoint, --json", "args": ["probe", str(good), "--checkpoint", run,
                                                                             "--json"],
                "expect": _ok_if(lambda rc, out, _err: rc == 0 and '"verdict"' in out and _valid_json(out),
                                 "prints the verdict as JSON")})
    return out


def _tfrecord(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + b"\0" * 4 + data + b"\0" * 4


def _diagnose_cases(logs: Path) -> list[dict[str, Any]]:
    logs.mkdir(parents=True)
    rows = "".join(f"{s},{2.0 * 0.99 ** s},0.001\n" for s in range(200))
    good = _write(logs / "good.csv", "step,loss,lr\n" + rows)
    files = {
        "an empty file": ("empty.csv", b""),
        "bytes that are not UTF-8": ("latin1.csv", b"step,loss\n1,2.0\n2,\xff\xfe\n"),
        "binary junk named .csv": ("junk.csv", bytes(range(256)) * 4),
        "JSON nested 100,000 deep": ("nested.jsonl", b'{"loss": ' + b"[" * 100_000 + b"\n"),
        "an integer of 5,000 digits": ("bigint.jsonl", b'{"step": 1, "loss": ' + b"9" * 5000 + b"}\n"),
        "a CSV field of 200 KiB": ("bigfield.csv", b"step,loss\n1," + b"1" * 200_000 + b"\n"),
        "a header and no rows": ("header.csv", b"step,loss\n"),
        "no loss column": ("noloss.csv", b"step,accuracy\n1,0.5\n"),
        "text in the loss column": ("text.csv", b"step,loss\n1,2.0\n2,oops\n"),
        "a JSON list per line": ("list.jsonl", b"[1, 2]\n"),
        "trainer_state.json without log_history": ("trainer_state.json", b'{"global_step": 3}'),
        "trainer_state.json cut short": ("cut/trainer_state.json", b'{"log_history": [{"loss": 2.0'),
        "an unknown extension": ("run.txt", b"hello"),
        "an event file of garbage": ("tb/events.out.tfevents.1.host", b"\x07" * 100),
    }
    cases: list[dict[str, Any]] = []
    for name, (fname, content) in files.items():
        path = logs / fname
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        cases.append({"group": "diagnose", "name": name, "args": ["diagnose", str(path)], "expect": "error"})
    extra = _write(logs / "extra.csv", "step,loss\n1,2.0\n2,1.9,7\n3,1.8\n")
    cases.append({"group": "diagnose", "name": "a row with a field too many", "args": ["diagnose", str(extra)],
                  "expect": _ok_if(lambda rc, _o, err: rc in (0, 1) and "extra.csv:3: 1 row has another number" in err,
                                   "read by position, with a warning naming the line")})
    (logs / "nothing").mkdir()
    outside = _write(logs / "elsewhere" / "metrics.csv", "step,loss,lr\n" + rows)
    (logs / "linked").mkdir()
    (logs / "linked" / "metrics.csv").symlink_to(outside)
    for name, args in {"a path that does not exist": ["diagnose", str(logs / "nope.csv")],
                       "a folder with no log": ["diagnose", str(logs / "nothing")],
                       "a folder whose only log is a link out of it": ["diagnose", str(logs / "linked")],
                       "--plot under /proc": ["diagnose", str(good), "--plot", "/proc/d.png"],
                       "--plot is a folder": ["diagnose", str(good), "--plot", str(logs)]}.items():
        cases.append({"group": "diagnose", "name": name, "args": args, "expect": "error"})

    cut = _write(logs / "killed" / "metrics.csv", "step,loss,lr\n" + rows + "200,0.2")
    nan = _write(logs / "nan.csv", "step,loss,lr\n" + rows + "200,nan,0.001\n201,inf,0.001\n")
    one = _write(logs / "one.csv", "step,loss,lr\n1,2.3,0.001\n")
    spike = _write(logs / "spike.csv", "step,loss,lr\n0,nan,0.001\n" + rows)
    state = logs / "hf" / "trainer_state.json"
    history = [{"loss": 2.0 * 0.97 ** s, "learning_rate": 1e-3, "step": s, "epoch": s / 40} for s in range(1, 81)]
    history += [{"eval_loss": v, "step": 20 * (i + 1), "epoch": (i + 1) / 2} for i, v in enumerate([0.9, 0.5, 0.8, 1.2])]
    _write(state, json.dumps({"log_history": history}))
    extreme = _write(logs / "extreme.csv", "step,loss,lr\n" + "".join(f"{s},{(-1) ** s * 1e308},0.1\n" for s in range(40)))
    checks = {
        "a last line cut short by a kill": (["diagnose", str(cut)], lambda rc, _o, e: rc in (0, 1) and "cut short" in e,
                                            "warns and reads the complete rows"),
        "NaN and infinity with --json": (["diagnose", str(nan), "--json"], lambda rc, o, _e: rc == 1 and _valid_json(o)
                                         and '"nan"' in o, "valid JSON naming the NaN"),
        "one row": (["diagnose", str(one)], lambda rc, o, _e: rc == 0 and "insufficient_data" in o, "says it is too short"),
        "one NaN at step 0 of a healthy run": (["diagnose", str(spike), "--json"],
                                               lambda _rc, o, _e: '"kind": "nan"' not in o, "not called a NaN run"),
        "2 epochs evaluated twice each, overfitting": (["diagnose", str(state), "--json"],
                                                       lambda _rc, o, _e: '"num_train_epochs": 1' in o,
                                                       "stop at epoch 1, not at 'epoch' 2 or 3"),
        "--plot of values near the float limit": (["diagnose", str(extreme), "--plot", str(logs / "x.png")],
                                                  lambda rc, _o, _e: rc in (0, 1) and (logs / "x.png").exists(), "drawn"),
    }
    for name, (args, predicate, why) in checks.items():
        cases.append({"group": "diagnose", "name": name, "args": args, "expect": _ok_if(predicate, why),
                      "keeps": "finding" if "--json" not in args else None})
    cases.append({"group": "diagnose", "name": "a truncated TensorBoard file", "args": ["diagnose", str(_tb_truncated(logs))],
                  "expect": _ok_if(lambda rc, _o, e: rc in (0, 1) and "truncated" in e, "warns and reads what was whole")})
    return cases


def _tb_truncated(logs: Path) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    folder = logs / "tbcut"
    writer = SummaryWriter(log_dir=str(folder))
    for s in range(100):
        writer.add_scalar("train/loss", 2.0 * 0.98 ** s, s)
    writer.close()
    event = next(folder.glob("events.out.tfevents*"))
    event.write_bytes(event.read_bytes()[:-25])
    return folder


# --- the Python API -------------------------------------------------------------------------------------------
def _tiny(lr: float = 0.1, x_seed: int = 0) -> tuple[Any, Any, Any]:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    g = torch.Generator().manual_seed(x_seed)
    loader = DataLoader(TensorDataset(torch.randn(16, 2, generator=g), torch.randn(16, 1, generator=g)), batch_size=4)
    return model, torch.optim.SGD(model.parameters(), lr=lr), loader


def _fit(**kwargs: Any) -> Any:
    from torch import nn

    from gradpilot import fit

    model, opt, loader = _tiny(kwargs.pop("lr", 0.1), kwargs.pop("x_seed", 0))
    return fit(kwargs.pop("model", model), kwargs.pop("optimizer", opt), nn.MSELoss(), kwargs.pop("loader", loader),
               **{"epochs": 1, **kwargs})


def _crafted_checkpoint(work: Path) -> Any:
    import torch

    class Payload:
        def __reduce__(self) -> Any:
            return (Path.touch, (work / "pwned",))

    (work / "ckpt").mkdir()
    torch.save({"format": 2, "step": Payload()}, work / "ckpt" / "last.pt")
    try:
        return _fit(checkpoint_dir=work / "ckpt")
    finally:
        if (work / "pwned").exists():
            raise AssertionError("the checkpoint ran code on load")


def _resume_changed(work: Path, **change: Any) -> Any:
    _fit(checkpoint_dir=work, epochs=2)
    return _fit(checkpoint_dir=work, epochs=2, **change)


def _early_stop_restart(work: Path) -> Any:
    import torch

    from gradpilot import EarlyStopping

    def run() -> Any:
        values = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        return _fit(checkpoint_dir=work, epochs=6, val_loader=[(torch.zeros(1, 2), torch.zeros(1, 1))],
                    metric=lambda _o, _y: next(values), early_stopping=EarlyStopping(patience=2))

    first, again = run(), run()
    return first.steps, again.steps


def _other_models_optimizer(_work: Path) -> Any:
    model, _, _ = _tiny()
    _, opt, _ = _tiny()
    return _fit(model=model, optimizer=opt)


def _find_lr(**kwargs: Any) -> Any:
    from torch import nn

    from gradpilot import find_lr

    model, opt, loader = _tiny()
    return find_lr(model, kwargs.pop("optimizer", opt), nn.MSELoss(), loader, **kwargs)


def _lion_like(_work: Path) -> Any:
    import torch

    class Lion(torch.optim.SGD):
        pass

    model, _, _ = _tiny()
    return _find_lr(optimizer=Lion(model.parameters(), lr=0.1))


def _batch_search_unbounded(_work: Path) -> Any:
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from gradpilot import find_batch_size

    model = nn.Linear(4, 2)
    data = TensorDataset(torch.randn(768, 4), torch.randint(0, 2, (768,)))
    return find_batch_size(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), data)


def _noise_scale_bn(_work: Path) -> Any:
    import copy

    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from gradpilot import estimate_noise_scale

    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    x = torch.randn(256, 4)
    before = copy.deepcopy(model.state_dict())
    estimate_noise_scale(model, nn.CrossEntropyLoss(), TensorDataset(x, (x[:, 0] > 0).long()), small_batch=4, big_batch=64)
    return all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def _evaluate_forwards(_work: Path) -> Any:
    from torch import nn

    from gradpilot.train.fitting import evaluate

    model, _, loader = _tiny()
    calls: list[int] = []
    model.register_forward_hook(lambda *_a: calls.append(1))
    evaluate(model, loader, None, lambda _o, _y: 0.0, step_fn=lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]))
    return len(calls), len(loader)


def _bucketed_batch(_work: Path) -> Any:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    model, opt, _ = _tiny()
    data = TensorDataset(torch.randn(16, 2), torch.randn(16, 1))
    loader = DataLoader(data, batch_sampler=[list(range(6)), list(range(6, 16))])
    return _fit(model=model, optimizer=opt, loader=loader).effective_batch_size


def _fit_task(**kwargs: Any) -> Any:
    from gradpilot import fit
    from gradpilot.examples import example_task

    return fit(example_task(0), **kwargs)


def api_cases() -> list[dict[str, Any]]:
    """Every Python-API case."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    empty = DataLoader(TensorDataset(torch.zeros(0, 2), torch.zeros(0, 1)))
    c: list[dict[str, Any]] = []

    def case(group: str, name: str, call: Callable[[Path], Any], expect: Any = "error") -> None:
        c.append({"group": group, "name": name, "call": call, "expect": expect})

    for name, kwargs in {"epochs=nan": {"epochs": math.nan}, "epochs=2.5": {"epochs": 2.5}, "epochs=0": {"epochs": 0},
                         "epochs=True": {"epochs": True}, "accumulation_steps=2.5": {"accumulation_steps": 2.5},
                         "max_grad_norm=nan": {"max_grad_norm": math.nan}, "max_grad_norm=-1": {"max_grad_norm": -1.0},
                         "checkpoint_every=0": {"checkpoint_every": 0}, "an empty validation loader": {"val_loader": empty},
                         "an empty training loader": {"loader": []}, "scheduler 'cosin'": {"scheduler": "cosin"},
                         "scheduler option it does not take": {"scheduler": "cosine", "scheduler_options": {"gamma": 1}},
                         "early stopping without validation": {"early_stopping": __import__("gradpilot").EarlyStopping()},
                         }.items():
        case("fit", name, lambda _w, k=kwargs: _fit(**k))
    case("fit", "an optimizer over another model's parameters", _other_models_optimizer)
    case("fit", "a checkpoint_dir that is a file", lambda w: (_write(w / "f", "x"), _fit(checkpoint_dir=w / "f")))
    case("fit", "a checkpoint_dir under /proc", lambda _w: _fit(checkpoint_dir="/proc/gp"))
    case("fit", "fit(task, epochs=0)", lambda _w: _fit_task(epochs=0))
    case("fit", "fit(task, train_loader=[])", lambda _w: _fit_task(train_loader=[]))
    case("resume", "a checkpoint crafted to run code on load", _crafted_checkpoint)
    case("resume", "a changed learning rate", lambda w: _resume_changed(w, lr=0.01))
    case("resume", "a changed dataset of the same length", lambda w: _resume_changed(w, x_seed=1))
    case("resume", "a changed max_grad_norm", lambda w: _resume_changed(w, max_grad_norm=1.0))
    case("resume", "an early-stopped run started again", _early_stop_restart,
         lambda v: (v[0] == v[1], f"steps {v[0]} then {v[1]}"))
    for name, kwargs in {"start_lr=nan": {"start_lr": math.nan}, "num_steps=2.5": {"num_steps": 2.5},
                         "smoothing=1": {"smoothing": 1.0}, "family='bogus'": {"family": "bogus"},
                         "rule='bogus'": {"rule": "bogus"}, "end_lr=inf": {"end_lr": math.inf}}.items():
        case("find_lr", name, lambda _w, k=kwargs: _find_lr(**k))
    case("find_lr", "an optimizer gradpilot cannot place (a Lion)", _lion_like)
    case("batch size", "no limit on CPU, 768 items", _batch_search_unbounded,
         lambda r: (r.batch_size <= 768 and "dataset's size" in r.limit, f"batch {r.batch_size}: {r.limit[:60]}"))
    case("batch size", "noise scale on a BatchNorm model", _noise_scale_bn, lambda same: (same, "statistics unchanged"))
    case("scaling", "scale_lr for Lion under rule auto",
         lambda _w: __import__("gradpilot").scaling.scale_lr(1e-3, 32, 64, "auto", optimizer="lion"))
    case("scaling", "plan(10^8, 1)", lambda _w: __import__("gradpilot").scaling.plan(10**8, 1),
         lambda p: (p.exact, "exact, at once"))
    case("training", "evaluate with step_fn and metric", _evaluate_forwards,
         lambda v: (v[0] == v[1], f"{v[0]} forwards for {v[1]} batches"))
    case("training", "effective batch with a batch sampler", _bucketed_batch, lambda b: (b == 8, f"effective batch {b}"))
    return c
