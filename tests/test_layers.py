"""The house's floors, read from the source: every import (in functions and under TYPE_CHECKING too) goes to its
own floor or one below; no import circle; the pure floor never imports torch; the top level stays small."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gradpilot"

# The floors, from the pure parts up to the command line. A module's floor is its package's (or its own).
FLOORS = {
    "errors": 0, "_files": 0, "_validate": 0, "_direction": 0, "_lazy": 0, "_records": 0, "scaling": 0, "plots": 0,
    "diagnosis": 0,  # the pure parts: never torch
    "schedules": 1,  # the one LR function, the named schedules
    "train": 2, "examples": 2,  # the engine, the Task, fit
    "lr": 3, "batch": 3,  # the finders
    "tuning": 4, "probing": 4, "report": 4,  # the workflows, and the pages that show a tune or a diagnosed run
    "integrations": 5, "task_file": 5,  # the user's own trainers; the files tasks are written in
    "cli": 7,
    "": 8,  # gradpilot/__init__.py: the curated names, each from its concept
}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(p for p in ("gradpilot", *parts) if p != "__init__")
        found[name] = path
    return found


def floor(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else ""
    assert top in FLOORS, f"{module} is on no floor: give its package a place in FLOORS"
    return FLOORS[top]


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """Every gradpilot module ``path`` imports, wherever the import stands."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], *filter(None, [base])])
            for alias in node.names:
                target = f"{base}.{alias.name}"
                out.add(target if target in known else base)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in known and m != name}


def third_party(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
    return out


def test_every_import_goes_to_its_own_floor_or_below():
    known = modules()
    upward = [(name, target) for name, path in known.items() for target in imports(path, name, known)
              if floor(target) > floor(name)]
    assert upward == [], f"imports that reach up a floor: {upward}"


def test_no_import_circle_typing_imports_included():
    known = modules()
    graph = {name: imports(path, name, known) for name, path in known.items()}
    circles = []
    for start in graph:
        stack, seen = [(start, (start,))], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    circles.append(path)
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*path, nxt)))
    assert circles == [], f"import circles: {circles[:3]}"


def test_the_pure_floor_never_imports_torch_and_tuning_no_integration():
    known = modules()
    pure = [name for name, path in known.items() if floor(name) == 0 and "torch" in third_party(path)]
    assert pure == []
    assert not any(target.startswith("gradpilot.integrations") for name, path in known.items()
                   if name.startswith("gradpilot.tuning") for target in imports(path, name, known))


def test_the_top_level_holds_few_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 15, top


def test_the_floors_are_checked_by_a_test_that_can_fail(tmp_path):
    """The absolute reference: a module that reaches up a floor is caught by the same reading."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from gradpilot.cli import app\n")
    known = {**modules(), "gradpilot.diagnosis.bad": bad}
    assert imports(bad, "gradpilot.diagnosis.bad", known) == {"gradpilot.cli"}
    assert floor("gradpilot.cli") > floor("gradpilot.diagnosis.bad")
