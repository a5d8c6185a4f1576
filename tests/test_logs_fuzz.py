"""Property-based fuzzing of the log readers: no input makes them raise anything but gradpilot's one-line error."""

import json
import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gradpilot import GradpilotError, diagnose, read_log

# 150 examples a test in the suite; GRADPILOT_FUZZ_EXAMPLES=20000 for a long run
SETTINGS = settings(max_examples=int(os.environ.get("GRADPILOT_FUZZ_EXAMPLES", "150")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
NAMES = st.sampled_from(["metrics.csv", "run.tsv", "run.jsonl", "trainer_state.json"])
CELL = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers().map(str),
                 st.text(max_size=8), st.just(""), st.just("nan"))
COLUMN = st.sampled_from(["step", "epoch", "loss", "train_loss", "val_loss", "eval_loss", "lr", "lr-AdamW",
                          "val_acc", "grad_norm", "x", "epoch_loss", "learning_rate"])
VALUE = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
                     lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                     max_leaves=6)


def check(path):
    """Read and diagnose: a History and a Diagnosis, or one GradpilotError on one line."""
    try:
        result = diagnose(read_log(path))
    except GradpilotError as exc:
        assert "\n" not in str(exc) and path.name in str(exc), str(exc)
        return
    json.dumps(result.to_json(), allow_nan=False)  # what --json prints is valid JSON


@SETTINGS
@given(name=NAMES, content=st.binary(max_size=400))
def test_random_bytes(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    check(path)


@SETTINGS
@example(header=["step", "val_loss"], rows=[["0.0", "0.0"], ["0.0", "0.0"], ["", "-1.0"]], cut=0, tsv=False)
@given(header=st.lists(COLUMN, min_size=1, max_size=6, unique=True),
       rows=st.lists(st.lists(CELL, max_size=7), max_size=40), cut=st.integers(0, 30), tsv=st.booleans())
def test_csv_shaped_text(tmp_path, header, rows, cut, tsv):
    sep = "\t" if tsv else ","
    text = sep.join(header) + "\n" + "".join(sep.join(r) + "\n" for r in rows)
    path = tmp_path / ("run.tsv" if tsv else "metrics.csv")
    path.write_text(text[: len(text) - cut] if cut < len(text) else text, encoding="utf-8", errors="replace")
    check(path)


@SETTINGS
@given(records=st.lists(st.dictionaries(COLUMN, VALUE, max_size=6), max_size=40), wrap=st.booleans(),
       cut=st.integers(0, 20))
def test_json_shaped_text(tmp_path, records, wrap, cut):
    if wrap:
        path = tmp_path / "trainer_state.json"
        text = json.dumps({"log_history": records})
    else:
        path = tmp_path / "run.jsonl"
        text = "".join(json.dumps(r) + "\n" for r in records)
    path.write_text(text[: max(1, len(text) - cut)])
    check(path)


@pytest.mark.parametrize("n", [1, 7, 8, 9])
def test_short_runs_at_the_edge_of_judging(tmp_path, n):
    path = tmp_path / "run.csv"
    path.write_text("step,loss\n" + "".join(f"{s},{2.0 - 0.01 * s}\n" for s in range(n)))
    result = diagnose(read_log(path))
    assert (result.kinds == {"insufficient_data"}) == (n < 8)
    assert ("too little to judge" in result.lr_reason) == (n < 8)  # 8+ points: the curve is judged
