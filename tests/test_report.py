"""The HTML pages: the tune report rendered in a real headless browser, rebuilt from tune.json, and the page
for one diagnosed run."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from gradpilot.cli import app
from gradpilot.errors import GradpilotError
from gradpilot.examples import accuracy, spirals
from gradpilot.report import SECTIONS, write_tune_report
from gradpilot.train.task import Task
from gradpilot.tuning import tune
from gradpilot.tuning.state import TuneRecord

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CHECK = """<script>window.addEventListener('load', () => {
  const images = [...document.images];
  const out = {images: images.length, loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
               sections: [...document.querySelectorAll('section')].map(s => s.id),
               tables: document.querySelectorAll('table').length, height: window.innerHeight,
               summary: [...document.querySelectorAll('#summary, #summary + p')].map(
                 p => ({bottom: p.getBoundingClientRect().bottom, text: p.textContent}))};
  const pre = document.createElement('pre'); pre.id = 'gp-check'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script></body>"""


def browser() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        if os.environ.get("GRADPILOT_REQUIRE_BROWSER"):
            pytest.fail("no chromium on PATH, and GRADPILOT_REQUIRE_BROWSER is set (.ci/run installs it)")
        pytest.skip("no headless browser here: `apt-get install chromium` (.ci/run does)")
    return found


def headless(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def page_images(folder: Path) -> int:
    return (folder / "report.html").read_text().count("<img ")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 3))
    task = Task(model=model, train_data=spirals(4096, seed=0), val_data=spirals(256, seed=1),
                loss_fn=nn.CrossEntropyLoss(), metric=accuracy, higher_is_better=True, optimizer="adamw", lr=1e-3,
                batch_size=32, epochs=8, name="report-task")
    tune(task, out_dir=out, budget=3)  # a budget the batch trials fit in: every panel of the page is drawn
    return out


def test_tune_writes_a_self_contained_page_under_the_size_limit(tuned):
    page = (tuned / "report.html").read_text()
    assert (tuned / "report.html").stat().st_size < 2 * 2**20
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)  # nothing fetched from outside the file
    for anchor, title in SECTIONS:
        assert f'id="{anchor}"' in page and html.escape(title) in page
    plan = json.loads((tuned / "tune.json").read_text())["plan"]
    assert f"<td>{plan['per_device_train_batch_size']}</td>" in page and "warmup_stable_decay" in page


def test_the_page_shows_the_trunk_its_branches_and_which_won(tuned):
    record = TuneRecord.read(tuned / "tune.json")
    page = (tuned / "report.html").read_text()
    section = re.search(r'<section id="epochs">(.*?)</section>', page, re.S).group(1)
    assert 'alt="the trunk and its branches"' in section
    seen = record.stage("epochs").evidence
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", section)]
    rows = [cells for cells in rows if cells]  # the header row has no <td>
    assert [int(cells[0]) for cells in rows] == [b.epochs for b in seen.branches] and len(seen.branches) >= 2
    chosen = [cells[0] for cells in rows if cells[-1] == "chosen"]
    assert chosen == [str(seen.branches[seen.winner].epochs)] == [str(record.plan["num_train_epochs"])]


def test_the_page_renders_in_a_real_browser_with_every_image_loaded(tuned, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text((tuned / "report.html").read_text().replace("</body>", CHECK))
    done = headless("--virtual-time-budget=10000", "--window-size=1100,900", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="gp-check">(.*?)</pre>', done.stdout)
    assert found, done.stderr[-2000:]
    check = json.loads(html.unescape(found.group(1)))
    record = TuneRecord.read(tuned / "tune.json")
    plan, story = check["summary"]
    assert plan["bottom"] <= check["height"] and story["bottom"] <= check["height"]  # both in the first screen
    assert f"learning_rate {record.plan['learning_rate']:.3g}" in plan["text"] and "accuracy" in plan["text"]
    found_lr = record.stage("lr_range").decision.suggestion
    assert story["text"].startswith(f"The range test suggested {found_lr:.3g}; the plan's ")
    page = (tuned / "report.html").read_text()
    search = record.stage("lr_search").decision
    if search.batch == record.settings["batch_size"]:  # on the curve's batch
        assert f"The black line marks the LR the search chose, {search.learning_rate:.3g}" in page
    assert check["images"] == page_images(tuned) >= 5 and check["loaded"] == check["images"]
    assert check["sections"] == [anchor for anchor, _ in SECTIONS] and check["tables"] >= 7
    shot = tmp_path / "report.png"
    headless("--window-size=1100,6000", f"--screenshot={shot}", (tuned / "report.html").as_uri())
    assert shot.stat().st_size > 50_000  # a page of figures, not a blank one
    if os.environ.get("GRADPILOT_SCREENSHOTS"):  # where to keep it for a person to look at
        saved = Path(os.environ["GRADPILOT_SCREENSHOTS"])
        saved.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, saved / "report.png")


def test_gradpilot_report_rebuilds_the_page_from_tune_json(tuned):
    (tuned / "report.html").unlink()
    result = CliRunner().invoke(app, ["report", str(tuned)])
    assert result.exit_code == 0, result.output
    assert "Report written to" in result.output and (tuned / "report.html").stat().st_size > 100_000


def test_the_page_says_what_each_stage_cost_in_seconds(tuned):
    record = json.loads((tuned / "tune.json").read_text())
    page = (tuned / "report.html").read_text()
    header = re.search(r"<tr><th>stage</th>(.*?)</tr>", page).group(1)
    column = re.findall(r"<th>(.*?)</th>", header).index("seconds")
    search = record["stages"]["lr_search"]["seconds"]
    row = re.search(r"<tr><td>lr_search</td>(.*?)</tr>", page)
    assert row is not None and search > 0
    cells = re.findall(r"<td>(.*?)</td>", row.group(1))
    assert float(cells[column]) == pytest.approx(search, abs=0.051)
    spent = record["stages"]["lr_search"]["spent"]  # and beside it, how they split
    assert cells[column + 1] == " / ".join(f"{spent[k]:.1f}" for k in ("training", "validation", "io", "other"))


def test_a_folder_without_a_finished_tune_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "tune.json does not exist" in result.output
    (tmp_path / "tune.json").write_text(json.dumps({"settings": {}, "stages": {}}))
    with pytest.raises(GradpilotError, match="holds no finished tune"):
        write_tune_report(tmp_path)
    (tmp_path / "tune.json").write_text("{cut")
    with pytest.raises(GradpilotError, match="cannot be read"):
        write_tune_report(tmp_path)


def test_diagnose_html_writes_the_run_s_page_without_importing_torch(tuned, tmp_path):
    log, page = next((tuned / "runs").glob("*/metrics.csv")), tmp_path / "run.html"
    code = ("import sys; from gradpilot.cli import main; sys.argv = ['gradpilot', 'diagnose', sys.argv[1], "
            "'--html', sys.argv[2]]\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'diagnose imported torch'")
    done = subprocess.run([sys.executable, "-c", code, str(log), str(page)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    assert "Page written to" in done.stdout and 'id="final-run"' in text and "data:image/png;base64," in text
    assert "Learning rate" in text and "<table>" in text


def test_a_page_that_cannot_be_drawn_costs_the_page_not_the_plan(tmp_path, monkeypatch):
    import gradpilot.report

    def broken(_out):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(gradpilot.report, "write_tune_report", broken)
    torch.manual_seed(0)
    task = Task(model=nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3)), train_data=spirals(256, seed=0),
                val_data=spirals(128, seed=1), loss_fn=nn.CrossEntropyLoss(), metric=accuracy, higher_is_better=True,
                optimizer="adam", lr=1e-3, batch_size=32, epochs=4, name="no-page")
    with pytest.warns(UserWarning, match="report.html was not written .*no fonts"):
        result = tune(task, out_dir=tmp_path, budget=2)
    assert result.plan_path.exists() and result.model_path.exists() and not result.report_path.exists()


@pytest.mark.parametrize(("found", "chosen", "words"), [
    (1e-3, 1.8e-2, "The range test suggested 0.001; the plan's 0.018 is 18× higher than that, because 5 short runs"),
    (1e-2, 1e-3, "the plan's 0.001 is 10× lower than that, because"),
    (1e-3, 1.05e-3, "the plan's 0.00105 is the same as that"),
])
def test_the_lr_story_says_how_far_the_search_moved_from_the_range_test(found, chosen, words):
    from gradpilot.report import lr_story
    from gradpilot.tuning.state import Chosen, RangeTest, Stage

    stages = (Stage("lr_range", RangeTest(found, found / 10, found * 10, 0.9), "why"),
              Stage("lr_search", Chosen(chosen, 32, 1, 0), "5 short runs; it scored best"))
    assert words in lr_story(TuneRecord({}, "", stages))
    assert lr_story(TuneRecord({}, "", (Stage("lr_range", None, "fixed", skipped="fixed"),))) == \
        "The learning rate was fixed."


@pytest.mark.parametrize(("peaks", "measured"), [
    ([404 * 2**20, 310 * 2**20, 248 * 2**20], False),  # a CPU's resident set: larger batches "use" less
    ([60_000, 120_000, 160_000], False),  # well under a MiB: nothing a reader can act on
    ([10 * 2**20, 20 * 2**20, 41 * 2**20], True),  # an allocator's peaks, growing with the batch
    ([10 * 2**20], False),  # one point is not a measurement of growth
])
def test_memory_is_shown_only_where_it_was_measured(peaks, measured):
    from gradpilot.report import memory_measured

    trials = [{"batch_size": 2**i, "fits": True, "peak_memory": m} for i, m in enumerate(peaks)]
    assert memory_measured([*trials, {"batch_size": 999, "fits": False, "peak_memory": None}]) is measured


def test_the_batch_panel_shows_memory_exactly_when_it_was_measured(tuned):
    from gradpilot.report import memory_measured

    page = (tuned / "report.html").read_text()
    from gradpilot._records import plain

    trials = [plain(t) for t in TuneRecord.read(tuned / "tune.json").stage("batch").evidence.trials]
    assert ("peak memory (MiB)" in page) is memory_measured(trials)
    assert ("Peak memory is not shown" in page) is not memory_measured(trials)
    section = re.sub(r"<img[^>]*>", "", page.split('id="batch"')[1].split("</section>")[0])
    assert not re.search(r"\de[+-]\d", section)  # samples/s as plain numbers, never 1.845e+04
