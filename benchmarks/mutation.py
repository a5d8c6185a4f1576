"""Mutation check: change one thing in a module (a comparison, an operator, a constant, a condition) and see
whether its tests notice. The share of mutants the tests kill is the score; a survivor is a behaviour no
test pins down.

Each mutant is written into a copy of the package in a temporary folder and the module's tests run against
it (``pytest -x -m "not slow"``); a failure or a time-out kills the mutant. Mutants are spread evenly over
the module's mutation points, at most ``--per-module`` of them, the same set every run.

    python benchmarks/mutation.py [--modules scaling suggest] [--per-module 40] [--jobs 2] [--survivors]
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
TESTS = {  # module -> the tests that speak for it
    "scaling": ["tests/test_scaling.py"],
    "suggest": ["tests/test_suggest.py"],
    "accumulation": ["tests/test_accumulation.py"],
    "schedules": ["tests/test_schedules.py"],
    "early_stopping": ["tests/test_early_stopping.py"],
    "diagnosis": ["tests/test_diagnosis.py"],
}
SWAPS: dict[type, type] = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                           ast.NotEq: ast.Eq, ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
                           ast.And: ast.Or, ast.Or: ast.And, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn,
                           ast.NotIn: ast.In}


@dataclass(frozen=True)
class Mutant:
    module: str
    index: int  # which mutation point, in source order
    line: int
    what: str
    source: str = ""  # the line, stripped

    @property
    def equivalent(self) -> str | None:
        """Why no test can tell this mutant from the code, when it is one of the known equivalents."""
        return next((why for (module, text, what), why in EQUIVALENT.items()
                     if module == self.module and what == self.what and text in self.source), None)


# Mutants that change nothing observable, each with the reason. They stay in the count of mutants, and the
# table gives the score with and without them. Identified by module, a piece of the line, and the change.
_CONTINUOUS = "a strict or non-strict comparison of two measured floats: they are equal only by coincidence"
EQUIVALENT: dict[tuple[str, str, str], str] = {
    ("diagnosis", "c.end > c.start + th.rise * c.noise", "Gt → GtE"): _CONTINUOUS,
    ("diagnosis", "c.moved < 0.03 or c.late_share", "Lt → LtE"): _CONTINUOUS,
    ("diagnosis", "train_end > at_best * 1.5", "Gt → GtE"): _CONTINUOUS,
    ("diagnosis", "not constant or c.moved < 0.3", "Lt → LtE"): _CONTINUOUS,
    ("diagnosis", "if c.late_share >= th.too_low_share:", "GtE → Gt"): _CONTINUOUS,
    ("diagnosis", "in the whole run\" if c.moved < 0.3 else None", "Lt → LtE"): _CONTINUOUS,
    ("diagnosis", "gave_back = drop > 3 * c.noise and rise > 0.5 * drop", "Gt → GtE"): _CONTINUOUS,
    ("diagnosis", "while end and not finite[end - 1]", "1 → 2"):
        "stops one point earlier inside the trailing non-finite block; the finite points kept are the same",
    ("accumulation", "if len(counts) == 1 and world_size == 1", "Eq → NotEq"):
        "the fast path and the general one give the same [1.0] for a lone batch in one process",
    ("accumulation", "if len(counts) == 1 and world_size == 1", "1 → 2"):
        "the fast path and the general one give the same [1.0] for a lone batch in one process",
    ("accumulation", "single = len(window) == 1 and world_size == 1", "Eq → NotEq"):
        "the fast path and the general one give the same weights for a lone batch in one process",
    ("accumulation", "weights = [1.0] if single", "1.0 → 0.0"): "a lone batch's loss is used unweighted: the weight is never read",
    ("schedules", "param = torch.nn.Parameter(torch.zeros(1))", "1 → 2"): "the dummy parameter's size draws no LR",
    ("schedules", "if metrics is not None and sched.needs_metric", "And → Or"):
        "Schedule.step ignores a metric a non-plateau schedule is given",
    ("schedules", "if steps > MAX_CURVE_STEPS", "Gt → GtE"):
        "differs only at exactly 5,000,000 steps, ten seconds of stepping: not worth a test",
    ("scaling", "if 1 <= m <= max_micro and fewest <= s <= 2 * fewest", "LtE → Lt"):
        "an exact split that needs exactly twice the fewest steps never beats one found with fewer",
    ("scaling", "math.floor(per_device / micro), math.ceil(per_device / micro)", "Div → Mult"):
        "in this branch the floor candidate is below the fewest steps or equals the ceiling",
}


def _in_message(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside an error message, a log call, a docstring or an f-string: text, not behaviour."""
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.Raise, ast.JoinedStr)):
            return True
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("info", "warning", "debug", "error"):
            return True
    return False


def _points(tree: ast.Module) -> Iterator[tuple[ast.AST, int | None, str]]:
    """Each place to mutate: the node, which of a comparison's operators (or None), and what changes.
    (The parser shares operator objects between nodes, so a mutant replaces the operator in its node.)"""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if _in_message(node, parents):
            continue
        if isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                if type(op) in SWAPS:
                    yield node, k, f"{type(op).__name__} → {SWAPS[type(op)].__name__}"
        elif isinstance(node, (ast.BinOp, ast.BoolOp)) and type(node.op) in SWAPS:
            yield node, None, f"{type(node.op).__name__} → {SWAPS[type(node.op)].__name__}"
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float) and not isinstance(node.value, bool):
            yield node, None, f"{node.value!r} → {_bumped(node.value)!r}"
        elif isinstance(node, (ast.If, ast.While)) and not isinstance(node.test, ast.Constant):
            yield node, None, "condition negated"
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield node, None, "`not` removed"


def _bumped(value: float) -> float:
    if isinstance(value, int):
        return value + 1
    return 0.0 if value == 1 else value * 2 if value != 0 else 1.0


def mutation_points(module: str) -> list[tuple[int, str, str]]:
    text = (ROOT / "gradpilot" / f"{module}.py").read_text()
    lines = text.splitlines()
    return [(line, what, lines[line - 1].strip() if line else "")
            for node, _, what in _points(ast.parse(text)) for line in [getattr(node, "lineno", 0)]]


def _apply(tree: ast.Module, index: int) -> ast.Module:
    node, k, _ = list(_points(tree))[index]
    if isinstance(node, ast.Compare) and k is not None:
        node.ops[k] = SWAPS[type(node.ops[k])]()
    elif isinstance(node, (ast.BinOp, ast.BoolOp)):
        node.op = SWAPS[type(node.op)]()
    elif isinstance(node, ast.Constant):
        node.value = _bumped(node.value)
    elif isinstance(node, (ast.If, ast.While)):
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
    elif isinstance(node, ast.UnaryOp):
        node.op = ast.UAdd()  # +x of a bool is its int: the truth of x, without the `not`
    return ast.fix_missing_locations(tree)


def mutate(module: str, index: int) -> str:
    tree = ast.parse((ROOT / "gradpilot" / f"{module}.py").read_text())
    return ast.unparse(_apply(tree, index))


def run_mutant(mutant: Mutant, workdir: Path, timeout: float) -> bool:
    """True when the tests kill the mutant (fail, error or time out)."""
    pkg = workdir / "gradpilot"
    (pkg / f"{mutant.module}.py").write_text(mutate(mutant.module, mutant.index))
    env = {**os.environ, "PYTHONPATH": str(workdir), "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        p = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                            *TESTS[mutant.module]], cwd=workdir, env=env, capture_output=True, timeout=timeout)
        killed = p.returncode != 0
    except subprocess.TimeoutExpired:
        killed = True
    shutil.copy(ROOT / "gradpilot" / f"{mutant.module}.py", pkg / f"{mutant.module}.py")
    return killed


def pick(module: str, limit: int) -> list[Mutant]:
    points = mutation_points(module)
    step = max(1.0, len(points) / limit)
    chosen = sorted({int(i * step) for i in range(min(limit, len(points)))})
    return [Mutant(module, i, points[i][0], points[i][1], points[i][2]) for i in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="*", default=list(TESTS))
    parser.add_argument("--per-module", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--survivors", action="store_true", help="list each surviving mutant")
    args = parser.parse_args()
    console = Console()
    mutants = [m for module in args.modules for m in pick(module, args.per_module)]
    workdirs = []
    for j in range(args.jobs):
        w = Path(tempfile.mkdtemp(prefix=f"gp-mutation-{j}-"))
        shutil.copytree(ROOT / "gradpilot", w / "gradpilot")
        shutil.copytree(ROOT / "tests", w / "tests")
        shutil.copy(ROOT / "pyproject.toml", w / "pyproject.toml")
        workdirs.append(w)
    results: dict[Mutant, bool] = {}
    with console.status(f"{len(mutants)} mutants…") as status, ThreadPoolExecutor(args.jobs) as pool:
        def job(k: int) -> None:
            for m in mutants[k :: args.jobs]:
                results[m] = run_mutant(m, workdirs[k], args.timeout)
                status.update(f"{len(results)}/{len(mutants)} mutants run")

        list(pool.map(job, range(args.jobs)))
    for w in workdirs:
        shutil.rmtree(w, ignore_errors=True)
    report(console, args.modules, results, args.survivors)


def report(console: Console, modules: list[str], results: dict[Mutant, bool], survivors: bool) -> None:
    table = Table(title="Mutation score: the share of mutants the module's tests kill")
    for col in ("module", "mutants", "killed", "survived", "score", "equivalent", "score without them"):
        table.add_column(col, justify="left" if col == "module" else "right")
    for module in [*modules, "all"]:
        rows = [(m, k) for m, k in results.items() if module in ("all", m.module)]
        if not rows:
            continue
        killed = sum(k for _, k in rows)
        same = sum(1 for m, k in rows if not k and m.equivalent)
        table.add_row(module, str(len(rows)), str(killed), str(len(rows) - killed), f"{killed / len(rows):.0%}",
                      str(same), f"{killed / (len(rows) - same):.0%}")
    console.print(table)
    if survivors:
        for m, killed in sorted(results.items(), key=lambda kv: (kv[0].module, kv[0].index)):
            if not killed:
                note = f"  — equivalent: {m.equivalent}" if m.equivalent else ""
                console.print(f"survived: gradpilot/{m.module}.py:{m.line}  {m.what}{note}")


if __name__ == "__main__":
    main()
