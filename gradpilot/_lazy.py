"""Names a package exports but imports only when first used, so that importing it stays light: ``import
gradpilot`` and ``gradpilot diagnose`` never pay for torch. Each package's ``__init__`` lists its lazy names
with the submodule that defines them (and imports them under ``TYPE_CHECKING`` for the type checker)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def exports(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` is imported from ``package.where[name]`` on first use and
    kept; a submodule named in ``where``'s values is importable as an attribute too."""
    submodules = set(where.values())

    def __getattr__(name: str) -> Any:
        if name in where:
            value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        elif name in submodules:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
