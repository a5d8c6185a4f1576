"""What makes a run the same run: the settings a checkpoint must match before a restart may continue it."""

from __future__ import annotations

import hashlib
import inspect
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from gradpilot.errors import GradpilotError

_SAMPLES = 8  # items hashed from a dataset: enough to tell two datasets apart, cheap for any size


def optimizer_settings(optimizer: torch.optim.Optimizer) -> dict[str, str]:
    """Each param group's hyperparameters (``lr``, ``weight_decay``, ``betas``, ...) as text, by name."""
    out = {"optimizer": type(optimizer).__name__}
    for i, group in enumerate(optimizer.param_groups):
        prefix = "" if i == 0 else f"group{i}."
        for key, value in group.items():
            if key != "params":
                out[prefix + key] = _text(value)
        out[prefix + "parameters"] = str(sum(p.numel() for p in group["params"]))
    return out


def model_layout(model: nn.Module) -> str:
    """A digest of the model's state-dict names, shapes and dtypes (not values: those are what training changes)."""
    layout = [(k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]
    return hashlib.blake2b(repr(layout).encode(), digest_size=8).hexdigest()


def data_digest(loader: Any) -> str:
    """Length and a digest of a few items of the loader's dataset (read under fixed seeds, so random
    augmentations give the same digest every time); "unknown" when the data cannot be indexed."""
    dataset = getattr(loader, "dataset", loader)
    try:
        n = len(dataset)
        picks = sorted({round(i * (n - 1) / (_SAMPLES - 1)) for i in range(_SAMPLES)}) if n else []
        with _fixed_seeds():
            items = [dataset[i] for i in picks]
    except Exception:
        return "unknown"
    h = hashlib.blake2b(digest_size=8)
    for item in items:
        _feed(h, item)
    return f"{n} items, {h.hexdigest()}"


@contextmanager
def _fixed_seeds() -> Iterator[None]:
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random.seed(0)
        np.random.seed(0)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, np.ndarray):
        h.update(f"{value.dtype}{value.shape}".encode() + np.ascontiguousarray(value).tobytes())
    elif isinstance(value, Mapping):
        for k in sorted(value, key=str):
            h.update(str(k).encode())
            _feed(h, value[k])
    elif isinstance(value, (list, tuple)):
        for v in value:
            _feed(h, v)
    elif isinstance(value, (bool, int, float, complex, str, bytes, type(None))):
        h.update(repr(value).encode())
    else:  # images and other objects: their type only (a repr may hold a memory address)
        h.update(type(value).__name__.encode())


def _text(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return repr(value.tolist())
    if isinstance(value, float):
        return repr(value)
    return repr(value) if isinstance(value, (int, str, bool, tuple, list, type(None))) else type(value).__name__


def code_digest(fn: Any) -> str | None:
    """A digest of what a function computes — its source where Python can read it, else its bytecode and
    constants — so that a metric or loss whose body changed under the same name is told apart. A module (a loss
    such as ``nn.CrossEntropyLoss()``) by its class's ``forward``; None for None."""
    if fn is None:
        return None
    target = fn if callable(fn) and hasattr(fn, "__code__") else getattr(type(fn), "forward", None) or type(fn)
    target = getattr(target, "__func__", target)
    try:
        text = inspect.getsource(target)
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        text = repr((code.co_code, code.co_consts, code.co_names)) if code is not None else type(fn).__qualname__
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A digest of a state dict's names and values: two runs start from the same weights when it matches."""
    h = hashlib.blake2b(digest_size=8)
    _feed(h, dict(state))
    return h.hexdigest()


def check_same(saved: Mapping[str, Any], current: Mapping[str, Any], *, what: str, remedy: str) -> None:
    """Refuse, in one line naming what changed, to continue ``what`` (a run, a tune, a shared study) whose
    settings differ from those it was started with."""
    keys = [k for k in dict.fromkeys([*saved, *current]) if saved.get(k) != current.get(k)]
    if keys:
        changes = "; ".join(f"{k}: {_short(saved.get(k, 'unset'))} → {_short(current.get(k, 'unset'))}"
                            for k in keys[:4])
        more = f" (and {len(keys) - 4} more)" if len(keys) > 4 else ""
        raise GradpilotError(f"{what} with other settings ({changes}{more}): {remedy}")


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."
