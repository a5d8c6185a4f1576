"""The Python files users describe their training in: ``task(seed) -> Task``, or ``make_trainer(plan)``
returning their own Hugging Face ``Trainer`` or Lightning trainer, which the integrations turn into a ``Task``.
Every mistake in such a file, and anything its code raises, is one clear line."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradpilot.errors import GradpilotError, describe
from gradpilot.train.task import Task


def load_task(path: str | Path, seed: int = 0) -> Task:
    """Import a task file and call its ``task(seed)``; every mistake in the file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise GradpilotError(f"task file {path} does not exist")
    if path.suffix != ".py":
        raise GradpilotError(f"task file {path} is not a .py file")
    spec = importlib.util.spec_from_file_location(f"gradpilot_task_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise GradpilotError(f"{path} is not a Python file gradpilot can import")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    _call(f"importing {path}", spec.loader.exec_module, module)
    factory = getattr(module, "task", None)
    maker = getattr(module, "make_trainer", None)
    if not callable(factory) and callable(maker):
        _seed_everything(seed)
        made = _call(f"make_trainer() in {path}", maker, {})
        adapted: Task = _call(f"make_trainer() in {path}", _from_trainer, made, path.stem, _checked_maker(maker, path))
        return adapted
    if not callable(factory):
        raise GradpilotError(f"{path} defines no task() function: add `def task(seed: int = 0) -> gradpilot.Task` "
                             "(or `def make_trainer(plan: dict)` returning a Hugging Face or Lightning trainer)")
    try:
        inspect.signature(factory).bind(seed=seed)
    except (TypeError, ValueError):
        raise GradpilotError(f"task() in {path} must take the seed: "
                             "`def task(seed: int = 0) -> gradpilot.Task`") from None
    _seed_everything(seed)
    result = _call(f"task() in {path}", factory, seed=seed)
    if not isinstance(result, Task):
        raise GradpilotError(f"task() in {path} returned {type(result).__name__}, not a gradpilot.Task")
    return result


def _seed_everything(seed: int) -> None:
    """torch's, NumPy's and Python's RNGs seeded before the file builds its model: the same file and seed give
    the same initial weights in every process (a worker, a resume), even where the file does not seed them
    (a pretrained model's new head is drawn at random)."""
    import random

    import numpy as np
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _checked_maker(maker: Callable[[dict[str, Any]], Any], path: Path) -> Callable[[dict[str, Any]], Any]:
    """``make_trainer`` as tune's runs call it: seeded as the first call was, anything it raises one line."""

    def make(plan: dict[str, Any]) -> Any:
        return _call(f"make_trainer() in {path}", maker, plan)

    return make


def _from_trainer(made: Any, name: str, maker: Callable[[dict[str, Any]], Any]) -> Task:
    """A task from what ``make_trainer({})`` returned: a Hugging Face ``Trainer``, or Lightning's
    ``(trainer, module[, datamodule])``; every run tune makes goes through trainers ``maker`` builds."""
    kind = type(made[0] if isinstance(made, tuple) and made else made).__module__.split(".")[0]
    if kind == "transformers":
        from gradpilot.integrations import transformers

        return transformers.task_from_trainer(made, name, maker)
    if kind in ("lightning", "pytorch_lightning"):
        from gradpilot.integrations import lightning

        return lightning.task_from_trainer(made, name, maker)
    raise GradpilotError(f"make_trainer() returned {type(made).__name__}: return a transformers.Trainer, or "
                         "(lightning.Trainer, LightningModule[, LightningDataModule])")


def _call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run the user's code; anything it raises (even ``sys.exit``) becomes one line naming where."""
    try:
        return fn(*args, **kwargs)
    except GradpilotError as exc:
        raise GradpilotError(f"{what}: {exc}") from None
    except SystemExit as exc:
        raise GradpilotError(f"{what} called sys.exit({exc.code!r}): a task file must not exit") from None
    except Exception as exc:
        raise GradpilotError(f"{what} failed: {describe(exc)}") from None
