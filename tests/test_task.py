
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradpilot import GradpilotError, Task, load_task
from gradpilot.examples import example_task
from gradpilot.train.task import build_optimizer
from tests.conftest import TASK_FILE, write


def test_load_task_calls_task_with_the_seed(tmp_path):
    task = load_task(write(tmp_path, TASK_FILE), seed=3)
    assert task.name == "file-task-3"
    opt = task.make_optimizer()
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["momentum"] == 0.9
    assert task.make_optimizer(lr=0.2).param_groups[0]["lr"] == 0.2
    assert task.optimizer_name == "sgd"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x = 1\n", r"defines no task\(\) function"),
        ("def task(seed=0):\n    return 42\n", "returned int, not a gradpilot.Task"),
        ("import not_a_module_anywhere\n", "importing .* failed: ModuleNotFoundError"),
    ],
)
def test_bad_task_files_give_one_line_errors(tmp_path, text, message):
    with pytest.raises(GradpilotError, match=message) as err:
        load_task(write(tmp_path, text))
    assert "\n" not in str(err.value)


def test_missing_task_file(tmp_path):
    with pytest.raises(GradpilotError, match="does not exist"):
        load_task(tmp_path / "nope.py")


def test_unknown_optimizer_lists_choices():
    with pytest.raises(GradpilotError, match=r"unknown optimizer 'lion'.*adamw"):
        build_optimizer("lion", nn.Linear(2, 2).parameters(), 0.1)


def test_optimizer_factory_and_frozen_parameters_are_respected():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].weight.requires_grad_(False)
    task = Task(model, TensorDataset(torch.zeros(4, 2), torch.zeros(4, 2)), nn.MSELoss(),
                optimizer=lambda params, lr: torch.optim.Adagrad(params, lr=lr))
    opt = task.make_optimizer(0.3)
    assert isinstance(opt, torch.optim.Adagrad)
    assert sum(len(g["params"]) for g in opt.param_groups) == 3
    assert task.optimizer_name == "adagrad"


def test_loaders_shuffle_by_seed_and_accept_ready_loaders():
    task = example_task(0)
    first = lambda seed: next(iter(task.train_loader(seed)))[0]
    assert torch.equal(first(1), first(1))
    assert not torch.equal(first(1), first(2))
    val = task.val_loader()
    assert val.batch_size == 256
    ready = DataLoader(TensorDataset(torch.zeros(4, 2), torch.zeros(4)), batch_size=2)
    t2 = Task(nn.Linear(2, 1), ready, nn.MSELoss(), val_data=ready)
    assert t2.train_loader(5) is ready and t2.val_loader() is ready
    assert Task(nn.Linear(2, 1), ready, nn.MSELoss()).val_loader() is None


def test_example_task_is_trainable_and_scored():
    task = example_task(0)
    x, y = next(iter(task.val_loader()))
    assert task.higher_is_better and 0 <= task.metric(task.model(x), y) <= 1


TASK_WITH = """
import sys
import torch
from torch import nn
from torch.utils.data import TensorDataset
import gradpilot

def task(seed: int = 0) -> gradpilot.Task:
    x = torch.randn(8, 4)
    model = nn.Linear(4, 2)
    kwargs = dict(model=model, train_data=TensorDataset(x, torch.zeros(8, dtype=torch.long)),
                  loss_fn=nn.CrossEntropyLoss())
    {change}
    return gradpilot.Task(**kwargs)
"""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("kwargs['train_data'] = TensorDataset(torch.zeros(0, 4), torch.zeros(0))", "Task.train_data is empty"),
        ("kwargs['val_data'] = []", "Task.val_data is empty"),
        ("del kwargs['loss_fn']", r"task\(\) in .* failed: TypeError: .*loss_fn"),
        ("model.requires_grad_(False)", "no trainable parameters"),
        ("kwargs['lr'] = -1", "Task.lr must be a positive finite number"),
        ("kwargs['lr'] = float('nan')", "Task.lr must be a positive finite number"),
        ("kwargs['batch_size'] = 0", "Task.batch_size must be a positive whole number"),
        ("kwargs['epochs'] = 2.5", "Task.epochs must be a positive whole number"),
        ("kwargs['optimizer'] = 'lion'", "unknown Task.optimizer 'lion'"),
        ("kwargs['model'] = 'resnet'", "Task.model must be a torch.nn.Module"),
        ("kwargs['loss_fn'] = 'mse'", "Task.loss_fn must be callable"),
        ("kwargs['optimizer_kwargs'] = [1]", "Task.optimizer_kwargs must be a dict"),
        ("sys.exit(0)", r"called sys.exit\(0\): a task file must not exit"),
        ("raise RuntimeError('boom\\nsecond line')", r"failed: RuntimeError: boom$"),
    ],
)
def test_mistakes_inside_task_files_are_one_line_errors(tmp_path, change, message):
    with pytest.raises(GradpilotError, match=message) as err:
        load_task(write(tmp_path, TASK_WITH.replace("{change}", change)))
    assert "\n" not in str(err.value)


def test_task_without_a_seed_and_bad_optimizer_options(tmp_path):
    with pytest.raises(GradpilotError, match=r"must take the seed: `def task\(seed: int = 0\)"):
        load_task(write(tmp_path, "def task():\n    return None\n"))
    task = load_task(write(tmp_path, TASK_WITH.replace("{change}", "kwargs['optimizer_kwargs'] = {'momentum': -1}")))
    with pytest.raises(GradpilotError, match=r"optimizer 'adamw' refused its options \{'momentum': -1\}"):
        task.make_optimizer()
    with pytest.raises(GradpilotError, match="optimizer factory failed: ValueError"):
        Task(nn.Linear(2, 1), TensorDataset(torch.zeros(4, 2), torch.zeros(4, 1)), nn.MSELoss(),
             optimizer=lambda params, lr: torch.optim.SGD(params, lr=-lr)).make_optimizer()
    with pytest.raises(GradpilotError, match=r"is not a \.py file"):
        load_task(write(tmp_path, "x", name="task.txt"))


def test_a_task_with_its_own_step_and_collate_trains_and_validates_through_them():
    import gradpilot
    from gradpilot.examples import spirals

    calls = {"step": 0, "collate": 0}

    def step(model, batch):
        calls["step"] += 1
        return torch.nn.functional.cross_entropy(model(batch["x"]), batch["y"])

    def collate(items):
        calls["collate"] += 1
        return {"x": torch.stack([x for x, _ in items]), "y": torch.stack([y for _, y in items])}

    torch.manual_seed(0)
    task = gradpilot.Task(model=torch.nn.Linear(2, 3), train_data=spirals(256, seed=0), loss_fn=None,
                          val_data=spirals(64, seed=1), step_fn=step, collate_fn=collate, batch_size=32, epochs=2)
    result = gradpilot.fit(task, task.make_optimizer(0.05))
    assert calls["step"] >= 16 and calls["collate"] >= 16 and len(result.val_losses) == 2
    from gradpilot.train.evaluation import evaluate

    assert evaluate(task) == pytest.approx(result.val_losses[-1], rel=1e-5)
    assert gradpilot.find_lr(task, num_steps=12).suggestion > 0
    with pytest.raises(GradpilotError, match=r"Task\.loss_fn must be callable"):
        gradpilot.Task(model=torch.nn.Linear(2, 3), train_data=spirals(16, seed=0), loss_fn=None)
    with pytest.raises(GradpilotError, match=r"Task\.collate_fn must be callable"):
        gradpilot.Task(model=torch.nn.Linear(2, 3), train_data=spirals(16, seed=0), loss_fn=None, step_fn=step,
                       collate_fn=3)


def test_a_task_s_max_grad_norm_clips_every_run_of_it():
    import dataclasses

    from gradpilot.examples import spirals
    from gradpilot.train.run import local_run
    from gradpilot.train.seam import Setting

    torch.manual_seed(0)
    base = Task(model=nn.Linear(2, 3), train_data=spirals(256, seed=0), loss_fn=nn.CrossEntropyLoss(), batch_size=32,
                optimizer="sgd")  # SGD's step is the gradient: clipped, it all but stops
    initial = {k: v.clone() for k, v in base.model.state_dict().items()}
    moved = {}
    for clip in (None, 1e-6):
        task = dataclasses.replace(base, max_grad_norm=clip)
        run = local_run(task, Setting(1.0, 32), seed=0, weights=initial)
        run.advance(4)
        moved[clip] = float((task.model.weight - initial["weight"]).detach().abs().max())
    assert moved[1e-6] < 1e-5 < moved[None]
    with pytest.raises(GradpilotError, match="max_grad_norm must be a positive"):
        dataclasses.replace(base, max_grad_norm=0.0)


UNSEEDED = """
import torch
from torch import nn
from torch.utils.data import TensorDataset
import gradpilot

def task(seed: int = 0) -> gradpilot.Task:
    x = torch.randn(64, 4)  # neither the data nor the model is seeded here
    return gradpilot.Task(model=nn.Linear(4, 2), train_data=TensorDataset(x, (x[:, 0] > 0).long()),
                          loss_fn=nn.CrossEntropyLoss())
"""


def test_a_task_file_that_does_not_seed_still_gives_the_same_weights_for_the_same_seed(tmp_path):
    path = write(tmp_path, UNSEEDED)
    torch.randn(100)  # whatever the RNG's state before
    a, b, other = load_task(path, seed=3), load_task(path, seed=3), load_task(path, seed=4)
    assert torch.equal(a.model.weight, b.model.weight) and torch.equal(a.train_data.tensors[0], b.train_data.tensors[0])
    assert not torch.equal(a.model.weight, other.model.weight)
