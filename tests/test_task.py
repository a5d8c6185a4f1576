import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradpilot import GradpilotError, Task, load_task
from gradpilot.examples import example_task
from gradpilot.task import build_optimizer

TASK_FILE = """
import torch
from torch import nn
from torch.utils.data import TensorDataset
import gradpilot

def task(seed: int = 0) -> gradpilot.Task:
    torch.manual_seed(seed)
    x = torch.randn(64, 4)
    return gradpilot.Task(model=nn.Linear(4, 2), train_data=TensorDataset(x, (x[:, 0] > 0).long()),
                          loss_fn=nn.CrossEntropyLoss(), optimizer="sgd", optimizer_kwargs={"momentum": 0.9},
                          lr=0.05, batch_size=8, name=f"file-task-{seed}")
"""


def write(tmp_path, text, name="task.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


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
    first = lambda seed: next(iter(task.train_loader(seed)))[0]  # noqa: E731
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
