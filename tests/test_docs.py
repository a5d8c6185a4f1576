"""The documentation's programs run as written: every code block titled with a file name (```python
title="x.py"```) in the README and docs/, each in a fresh folder, as a user would paste it. Each page's links to
other pages resolve."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r'^```python title="([\w.-]+\.py)"\n(.*?)^```$', re.S | re.M)


def programs() -> list[tuple[str, str, str]]:
    """Each distinct program once (the README shows two of the trainers page's), with the first page it is on."""
    seen: dict[str, tuple[str, str, str]] = {}
    for page in PAGES:
        for name, body in BLOCK.findall(page.read_text()):
            seen.setdefault(body, (page.name, name, body))
    return list(seen.values())


def test_the_trainers_programs_are_there_and_the_readme_s_are_the_docs_own():
    named = {name for _, name, _ in programs()}
    assert {"hf_quickstart.py", "lightning_quickstart.py", "make_trainer_task.py"} <= named
    assert len([p for p in programs() if p[1] == "hf_quickstart.py"]) == 1  # one program, shown twice


@pytest.mark.parametrize(("page", "name", "body"), programs(), ids=lambda v: v if v.endswith((".py", ".md")) else "")
def test_a_titled_program_runs_as_written(tmp_path, page, name, body):
    pytest.importorskip("transformers" if "transformers" in body else "torch")
    if "lightning" in body:
        pytest.importorskip("lightning")
    (tmp_path / name).write_text(body)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, name], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, f"{page}: {name}\n{done.stderr[-3000:]}"
    if name == "hf_quickstart.py":
        assert (tmp_path / "hf-out" / "gradpilot-diagnosis.json").exists() and "suggested lr" in done.stdout
    if name == "lightning_quickstart.py":
        assert list((tmp_path / "pl-out").rglob("metrics.csv")) and "suggested lr" in done.stdout
    if name == "make_trainer_task.py":
        assert done.stdout.strip() == "0.003"  # the plan's value, over the default


def test_links_between_pages_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(((?!https?:)[^)#\s]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which is not there"
