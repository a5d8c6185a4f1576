"""Typed records both ways: a frozen dataclass to the plain JSON values it is written as (``plain``), and back
from them to the same dataclass (``typed``), by its field types. What a workflow writes to disk and what its
report reads back is one set of dataclasses, so a renamed field fails the type check, not a reader in production.

Types understood: dataclasses, ``tuple[X, ...]`` and fixed tuples, ``list[X]``, ``dict[str, X]``, ``X | None``,
unions of dataclasses (told apart by the ``kind`` written beside them), ``Literal``, ``float`` (JSON's null
comes back as NaN: JSON has no NaN), ``int``, ``str``, ``bool`` and ``Any`` (kept as it is). Pure Python.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from gradpilot._files import json_safe

T = TypeVar("T")
_HINTS: dict[type[Any], dict[str, Any]] = {}


def plain(value: Any) -> Any:
    """``value`` as JSON values: a dataclass as a dict of its fields (a member of a union of dataclasses with
    its ``kind``), tuples as lists, non-finite floats as null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe({f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)})
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return json_safe(value)


def tagged(value: Any) -> dict[str, Any] | None:
    """A member of a union of dataclasses: its fields and its ``kind`` (the class's name), or None."""
    if value is None:
        return None
    return {"kind": type(value).__name__, "value": plain(value)}


def typed(kind: type[T], data: Any) -> T:
    """The dataclass ``kind`` back from what ``plain`` wrote."""
    made: T = _value(kind, data)
    return made


def from_tagged(kinds: tuple[type[Any], ...], data: Any) -> Any:
    """A member of a union of dataclasses back from what ``tagged`` wrote (None for None)."""
    if data is None:
        return None
    by_name = {k.__name__: k for k in kinds}
    if not isinstance(data, dict) or data.get("kind") not in by_name:
        raise ValueError(f"a record of kind {data.get('kind') if isinstance(data, dict) else data!r} is none of "
                         f"{sorted(by_name)}")
    return _value(by_name[data["kind"]], data["value"])


def _hints(kind: type[Any]) -> dict[str, Any]:
    if kind not in _HINTS:
        _HINTS[kind] = get_type_hints(kind)
    return _HINTS[kind]


def _value(hint: Any, data: Any) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return _union(get_args(hint), data)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _dataclass(hint, data)
    if origin in (tuple, list):
        return _sequence(hint, origin, data)
    if origin is dict:
        value_type = get_args(hint)[1]
        return {k: _value(value_type, v) for k, v in data.items()}
    return _scalar(hint, origin, data)


def _scalar(hint: Any, origin: Any, data: Any) -> Any:
    """A value of no structure of its own: ``Any`` and a ``Literal`` as they are, a float (null: NaN)."""
    if hint is Any or origin is typing.Literal:
        return data
    if hint is float:
        return math.nan if data is None else float(data)
    return data if hint in (int, str, bool) or origin is not None else hint(data)


def _union(options: tuple[Any, ...], data: Any) -> Any:
    if data is None and type(None) in options:
        return None
    real = [o for o in options if o is not type(None)]
    if len(real) == 1:
        return _value(real[0], data)
    classes = tuple(o for o in real if isinstance(o, type) and dataclasses.is_dataclass(o))
    if classes and isinstance(data, dict) and "kind" in data:
        return from_tagged(classes, data)
    return data


def _dataclass(kind: type[Any], data: Any) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"a {kind.__name__} record must be a mapping, got {type(data).__name__}")
    hints = _hints(kind)
    known = {f.name for f in dataclasses.fields(kind)}
    return kind(**{k: _value(hints[k], v) for k, v in data.items() if k in known})


def _sequence(hint: Any, origin: Any, data: Any) -> Any:
    args = get_args(hint)
    if origin is list:
        return [_value(args[0], v) for v in data]
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_value(args[0], v) for v in data)
    return tuple(_value(a, v) for a, v in zip(args, data, strict=True))
