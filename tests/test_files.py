"""_files: every output written whole or not at all; JSON always valid."""

import json
import os

import numpy as np
import pytest

from gradpilot._files import dumps, json_safe, remove_temporaries, write_atomic, write_json
from gradpilot.errors import GradpilotError


def test_json_safe_reaches_into_nested_dicts_and_lists():
    assert json_safe({"a": [float("nan"), {"b": float("inf"), "c": np.float64(2.5)}], "d": np.int64(3)}) == \
        {"a": [None, {"b": None, "c": 2.5}], "d": 3}
    assert json.loads(dumps({"x": (float("-inf"), 1)})) == {"x": [None, 1]}


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_json(tmp_path / "tune.json", {"stage": 1})
    def broken(f):
        f.write(b"{half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, broken)
    assert json.loads(path.read_text()) == {"stage": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tune.json"]


def test_modes_text_and_bytes(tmp_path):
    public = write_atomic(tmp_path / "plan.yaml", "lr: 0.1\n")
    private = write_atomic(tmp_path / "w.pt", b"\x00\x01", private=True)
    assert public.read_text() == "lr: 0.1\n" and private.read_bytes() == b"\x00\x01"
    assert public.stat().st_mode & 0o777 == 0o644 and private.stat().st_mode & 0o777 == 0o600


def test_a_folder_where_the_file_goes_is_one_clear_line(tmp_path):
    (tmp_path / "report.html").mkdir()
    with pytest.raises(GradpilotError, match=r"report.html is a folder, where gradpilot writes a file: move it away"):
        write_atomic(tmp_path / "report.html", "<html>")


def test_a_planted_link_is_never_written_through_and_leftovers_are_removed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for guess in (f".model.pt.{os.getpid()}.tmp", ".model.pt.1.tmp"):
        (tmp_path / guess).symlink_to(victim)
    write_atomic(tmp_path / "model.pt", b"weights")
    assert victim.read_text() == "precious" and (tmp_path / "model.pt").read_bytes() == b"weights"
    remove_temporaries(tmp_path, "model.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "victim"]
