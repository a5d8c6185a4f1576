"""The pages a person reads to decide whether to trust a result: ``DIR/report.html`` for a tune, rebuilt from
``DIR/tune.json`` alone, and one page for a diagnosed run. Each is a single self-contained HTML file — the
figures are PNGs embedded in the page, the tables are HTML tables — that opens offline with no server.

The numbers come from tune.json and the run logs (analysis happened there); this module only lays them out.
No torch import: ``gradpilot report`` and ``gradpilot diagnose --html`` stay light.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import math
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from gradpilot import plots
from gradpilot._files import write_atomic
from gradpilot._records import plain
from gradpilot.diagnosis.detectors import Diagnosis, diagnose
from gradpilot.diagnosis.history import History
from gradpilot.diagnosis.logs import read_log
from gradpilot.errors import GradpilotError
from gradpilot.tuning.folder import TuneFolder
from gradpilot.tuning.state import (
    Batches,
    BatchSeen,
    Chosen,
    CurveSeen,
    RangeTest,
    SearchSeen,
    Splits,
    Stage,
    TrunkSeen,
    TuneRecord,
)

T = TypeVar("T")

SECTIONS = (("range-test", "1. Learning rate: the range test"), ("batch", "2. Batch size and scaling"),
            ("search", "3. The LR search: successive halving"),
            ("epochs", "4. Epochs: the trunk and its cooldown branches"), ("schedule", "5. The schedule"),
            ("final-run", "6. The final run, diagnosed"), ("plan", "7. The plan"))
_STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}img{max-width:100%}
table{border-collapse:collapse;margin:.8em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;
vertical-align:top}th{background:#f3f3f3}.why{color:#444}.skipped{color:#a60}code{background:#f3f3f3}"""


def write_tune_report(out_dir: str | Path) -> Path:
    """Write ``out_dir/report.html`` from ``out_dir/tune.json`` (what ``gradpilot report DIR`` does)."""
    folder = TuneFolder(Path(out_dir))
    record = TuneRecord.read(folder.record)
    if not record.finished:
        raise GradpilotError(f"{folder.record} holds no finished tune: finish it first (run the same `gradpilot tune` "
                             "again)")
    with tempfile.TemporaryDirectory() as tmp:
        figures = _Figures(Path(tmp))
        body = [_header(record), _range_section(record, figures), _batch_section(record, figures),
                _search_section(record, figures), _epochs_section(record, figures),
                _schedule_section(record, figures), _final_section(folder, figures), _plan_section(record)]
    return _write_page(folder.report, f"gradpilot tune — {record.settings.get('task', '')}", body)


def write_diagnosis_report(history: History, diagnosis: Diagnosis, path: str | Path) -> Path:
    """One run's page: its curves with each finding marked, the findings, and the verdict on the LR."""
    with tempfile.TemporaryDirectory() as tmp:
        figures = _Figures(Path(tmp))
        body = [f"<p>Read from <code>{_e(history.source)}</code>.</p>",
                _section("final-run", "The run, diagnosed", _diagnosis_html(history, diagnosis, figures))]
    return _write_page(Path(path), f"gradpilot diagnosis — {history.source}", body)


class _Figures:
    """Draws each figure into a scratch folder and hands it back as an embedded <img>."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.count = folder, 0

    def img(self, draw: Callable[[Path], Path], alt: str) -> str:
        self.count += 1
        path = draw(self.folder / f"figure-{self.count}.png")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return _e(value)


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_num(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(anchor: str, title: str, *parts: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{"".join(parts)}</section>'


def _why(stage: Stage | None) -> str:
    if stage is None:
        return '<p class="skipped">This stage did not run.</p>'
    kind = "skipped" if stage.skipped else "why"
    return f'<p class="{kind}"><b>Decision.</b> {_e(stage.why)}</p>'


def _title(anchor: str) -> str:
    return dict(SECTIONS)[anchor]


def _header(record: TuneRecord) -> str:
    """What a reader needs first: the plan, the model's score under the metric's name, and why the LR is what
    it is; then each stage's decision and cost."""
    s, run = record.settings, record.run_seconds
    rows = [[st.name, st.skipped or "ran", st.why, _runs(st, run), round(st.seconds, 1), _split(st)]
            for st in record.stages]
    spent = (f"spent {record.spent_runs:.2f} ({record.spent.work:.1f} s of training, validation and checkpoints; "
             f"{record.spent.other:.1f} s of bookkeeping besides)")
    return (f"<h1>gradpilot tune: {_e(s.get('task', ''))}</h1>" + _summary(record)
            + f"<p>Budget {record.budget_runs:.3g} runs, {spent}. One run is {s['epochs']} epochs over "
            f"{s['train_items']:,} items at batch {_batch(record)}, measured at {run:.3g} s. Peak disk "
            f"{_mib(record.peak_disk_bytes)} MiB. {_paid(record)}</p>"
            + _table(["stage", "ran", "decision", "cost (runs)", "seconds", "training / validation / i/o / other"],
                     rows))


def _paid(record: TuneRecord) -> str:
    """The wall time paid up to this page: the whole command's (start-up and imports included) and tune's own."""
    whole, run = record.process_seconds, record.run_seconds
    if not math.isfinite(record.wall_seconds):
        return ""
    runs = f" ({whole / run:.2f} runs)" if math.isfinite(whole) and run > 0 else ""
    command = f"the command had run {whole:.1f} s{runs}, " if math.isfinite(whole) else ""
    return f"Wall time paid up to this page: {command}tune {record.wall_seconds:.1f} s."


def _runs(stage: Stage, run_seconds: float) -> float:
    return round(stage.spent.work / run_seconds, 3) if run_seconds > 0 else 0.0


def _split(stage: Stage) -> str:
    c = stage.spent
    return " / ".join(f"{v:.1f}" for v in (c.training, c.validation, c.io, c.other))


def _summary(record: TuneRecord) -> str:
    plan, s = record.plan, record.settings
    metric = s.get("metric") or "loss"
    direction = "higher" if s.get("higher_is_better") else "lower"
    schedule = plan["lr_scheduler_type"] + (f", {plan['warmup_steps']} warmup steps" if plan.get("warmup_steps")
                                            else "")
    return (f'<p id="summary"><b>Plan:</b> <code>learning_rate</code> {_lr(plan["learning_rate"])}, batch '
            f'{plan["per_device_train_batch_size"]} × {plan["gradient_accumulation_steps"]} accumulation, '
            f'{plan["num_train_epochs"]} epochs, {_e(schedule)} (<code>plan.yaml</code>). Validation '
            f'<b>{_e(metric)}</b> of the trained model: <b>{_num(record.metric)}</b> ({direction} is better).'
            f"</p><p>{_e(lr_story(record))}</p>")


def _lr(value: float) -> str:
    return f"{value:.3g}"


def _decision(record: TuneRecord, name: str, kind: type[T]) -> T | None:
    """A stage's typed decision (None where the stage did not run or decided nothing)."""
    stage = record.stage(name)
    return stage.decision if stage is not None and isinstance(stage.decision, kind) else None


def _evidence(record: TuneRecord, name: str, kind: type[T]) -> T | None:
    """A stage's typed evidence (None where it saw none of that kind)."""
    stage = record.stage(name)
    return stage.evidence if stage is not None and isinstance(stage.evidence, kind) else None


def lr_story(record: TuneRecord) -> str:
    """One sentence from the range test's suggestion to the LR the plan holds, and why they differ."""
    found, chosen = _decision(record, "lr_range", RangeTest), _decision(record, "lr_search", Chosen)
    search = record.stage("lr_search")
    why = search.why if search is not None else "the search kept it"
    if chosen is None:
        return "The learning rate was fixed."
    if found is None:
        return f"The learning rate {_lr(chosen.learning_rate)} was fixed; {why}."
    ratio = chosen.learning_rate / found.suggestion
    how = "the same as" if abs(math.log10(ratio)) < 0.05 else (
        f"{ratio:.2g}× higher than" if ratio > 1 else f"{1 / ratio:.2g}× lower than")
    return (f"The range test suggested {_lr(found.suggestion)}; the plan's {_lr(chosen.learning_rate)} is {how} "
            f"that, because {why}.")


def _batch(record: TuneRecord) -> int:
    """The task's batch: its micro-batch × its accumulation steps."""
    return int(record.settings["batch_size"]) * int(record.settings.get("accumulation", 1))


def _searched(record: TuneRecord) -> float | None:
    """The LR the search chose, where it chose it at the range test's own batch (else it is not on that curve)."""
    chosen = _decision(record, "lr_search", Chosen)
    if chosen is None or chosen.batch != _batch(record):
        return None
    return chosen.learning_rate


def _range_section(record: TuneRecord, figures: _Figures) -> str:
    st, found, curve = record.stage("lr_range"), _decision(record, "lr_range", RangeTest), \
        _evidence(record, "lr_range", CurveSeen)
    if st is None or st.skipped or found is None or curve is None:
        return _section("range-test", _title("range-test"), _why(st))
    search = _evidence(record, "lr_search", SearchSeen)
    candidates = [t.lr for t in search.trials] if search is not None else []
    interval, searched = (found.low, found.high), _searched(record)
    figure = figures.img(lambda p: plots.plot_range_test(plain(curve), curve.picks, found.suggestion, interval,
                                                         candidates, p, searched=searched),
                         "range test with the chosen LR marked")
    rows = [[rule, lr] for rule, lr in sorted(curve.picks.items())] + \
        [["interval: low", interval[0]], ["interval: high", interval[1]]]
    caption = ("" if searched is None else
               f'<p id="range-chosen">The black line marks the LR the search chose, {_lr(searched)}; the red one '
               f"the range test's suggestion, {_lr(found.suggestion)}.</p>")
    return _section("range-test", _title("range-test"), _why(st), figure, caption,
                    _table(["rule", "learning rate"], rows))


def _batch_section(record: TuneRecord, figures: _Figures) -> str:
    parts = [_why(record.stage("batch")), _why(record.stage("accumulation"))]
    seen = _evidence(record, "batch", BatchSeen)
    trials = [plain(t) for t in seen.trials] if seen is not None else []
    if trials:
        measured = memory_measured(trials)
        shown = trials if measured else [{**t, "peak_memory": None} for t in trials]
        parts.append(figures.img(lambda p: plots.plot_batch_trials(shown, p), "batch-size trials"))
        if not measured:
            parts.append("<p>Peak memory is not shown: it did not grow measurably with the batch on this device "
                         "(on a CPU the process's memory moves by more than a small model's batches add).</p>")
        parts.append(_trials_table(trials, measured))
    parts.append(_scaling_table(record))
    return _section("batch", _title("batch"), *parts)


def _trials_table(trials: list[dict[str, Any]], measured: bool) -> str:
    memory = ["peak memory (MiB)"] if measured else []
    rows = [[t["batch_size"], "yes" if t["fits"] else "no",
             "" if t["samples_per_second"] is None else f"{t['samples_per_second']:,.0f}",
             *([_mib(t["peak_memory"])] if measured else []), t.get("error") or ""] for t in trials]
    return _table(["micro-batch", "fits", "items/s", *memory, "error"], rows)


def memory_measured(trials: list[dict[str, Any]]) -> bool:
    """Whether the trials' peak memory is a measurement: at least 1 MiB at the largest batch that fit, and
    never smaller at a larger batch (what a GPU's allocator reports; a CPU's resident set is noise here)."""
    fitted = [t["peak_memory"] for t in trials if t["fits"] and t["peak_memory"] is not None]
    sizes = [t["batch_size"] for t in trials if t["fits"] and t["peak_memory"] is not None]
    if len(fitted) < 2 or max(fitted) < 2**20:
        return False
    by_size = [m for _, m in sorted(zip(sizes, fitted, strict=True))]
    return all(b >= 0.9 * a for a, b in itertools.pairwise(by_size))


def _mib(value: int | None) -> str:
    return "" if value is None else f"{value / 2**20:,.2f}"


def _scaling_table(record: TuneRecord) -> str:
    """The arithmetic that set each batch's LR: the range test's LR at the task's batch, rescaled by the rule."""
    base = _batch(record)
    found, batches = _decision(record, "lr_range", RangeTest), _decision(record, "batch", Batches)
    splits = _decision(record, "accumulation", Splits)
    if found is None or splits is None:
        return ""
    rule = batches.rule if batches is not None else "none"
    power = {"linear": 1.0, "sqrt": 0.5}.get(rule, 0.0)
    rows = [[f"{micro} × {k}", micro * k, f"{found.suggestion:.3g} × ({micro * k}/{base})^{power:g}",
             found.suggestion * (micro * k / base) ** power] for micro, k in splits.splits]
    return (f"<p>LR rule for this optimizer: <b>{_e(rule)}</b>.</p>"
            + _table(["micro-batch × accumulation", "batch", "arithmetic", "centre of the LR search"], rows))


def _search_section(record: TuneRecord, figures: _Figures) -> str:
    st, chosen, seen = record.stage("lr_search"), _decision(record, "lr_search", Chosen), \
        _evidence(record, "lr_search", SearchSeen)
    if st is None or st.skipped or chosen is None or seen is None:
        return _section("search", _title("search"), _why(st))
    trials = [plain(t) for t in seen.trials]
    winner = (chosen.learning_rate, chosen.batch)
    figure = figures.img(lambda p: plots.plot_ladder(trials, winner, p), "successive halving ladder")
    rungs = [str(r) for r in seen.rungs]
    rows = [[_lr(t.lr), t.batch, t.state, *(t.scores.get(r, "") for r in rungs), f"{t.items:,}"]
            for t in sorted(seen.trials, key=lambda t: t.lr)]
    note = (f"<p>Rungs at {', '.join(f'{int(r):,}' for r in rungs)} items; each score is taken after a cooldown "
            f"of {seen.cooldown:.0%} of the rung, on a branch that is then thrown away.</p>")
    return _section("search", _title("search"), _why(st), note, figure,
                    _table(["lr", "batch", "state", *(f"score at {int(r):,}" for r in rungs),
                            "items trained (cooldowns included)"], rows))


def _epochs_section(record: TuneRecord, figures: _Figures) -> str:
    st, seen = record.stage("epochs"), _evidence(record, "epochs", TrunkSeen)
    if st is None or seen is None or not seen.branches:
        return _section("epochs", _title("epochs"), _why(st))
    rows = [[b.epochs, b.steps, b.decay, b.score, "chosen" if i == seen.winner else ""]
            for i, b in enumerate(seen.branches)]
    table = _table(["epochs", "optimizer steps", "decay steps", "validation metric", ""], rows)
    if seen.trunk_lrs is None:  # a fixed schedule, trained as one run: no trunk
        return _section("epochs", _title("epochs"), _why(st), table)
    trunk, branches = list(seen.trunk_lrs), [plain(b) for b in seen.branches]
    figure = figures.img(lambda p: plots.plot_trunk(trunk, branches, seen.winner, p), "the trunk and its branches")
    note = (f"<p>The search's winner went on from step {seen.from_step:,} at its constant LR (the trunk). "
            "Each branch decays the LR from the trunk and is validated; the trunk goes on from before the branch. "
            f"The branch that validated best — marked — is the model; its length is the plan's epochs.</p>")
    return _section("epochs", _title("epochs"), _why(st), note, figure, table)


def _schedule_section(record: TuneRecord, figures: _Figures) -> str:
    seen = _evidence(record, "epochs", TrunkSeen)
    lrs = list(seen.lrs) if seen is not None else []
    parts = [_why(record.stage("schedule"))]
    if lrs:
        parts.append(figures.img(lambda p: plots.plot_schedule(lrs, p, "the LR the model was trained at, step by step"),
                                 "the plan's schedule"))
    return _section("schedule", _title("schedule"), *parts)


def _final_section(folder: TuneFolder, figures: _Figures) -> str:
    found = folder.final / "metrics.csv"
    if not found.exists():
        return _section("final-run", _title("final-run"), "<p>The final run's log is not in this folder.</p>")
    history = read_log(found)
    note = ("<p>What the run's own log shows, as <code>gradpilot diagnose</code> reads it: advice about that run "
            "(where to stop it, whether to train longer). The plan above already holds tune's answer to those "
            "questions, and <code>model.pt</code> holds the weights the plan's run ends with.</p>")
    return _section("final-run", _title("final-run"), "<p>The run behind model.pt: the trunk up to the winning "
                    "branch, then its decay (<code>runs/final/metrics.csv</code>).</p>", note,
                    _diagnosis_html(history, diagnose(history), figures))


def _diagnosis_html(history: History, diagnosis: Diagnosis, figures: _Figures) -> str:
    figure = figures.img(lambda p: plots.plot_diagnosis(history, diagnosis, p), "run curves with findings")
    rows = [[f.kind, f"{f.unit} {f.start:g}–{f.end:g}", f.evidence, f"{f.confidence:.0%}", f.advice]
            for f in diagnosis.findings]
    return (figure + _table(["finding", "where", "evidence", "confidence", "what to change"], rows)
            + f"<p><b>Learning rate {_e(diagnosis.lr_verdict)}.</b> {_e(diagnosis.lr_reason)}</p>")


def _plan_section(record: TuneRecord) -> str:
    rows = [[name, f"{value:.4g}" if isinstance(value, float) else json.dumps(value), record.reasons.get(name, "")]
            for name, value in record.plan.items()]
    return _section("plan", _title("plan"), "<p>In <code>transformers.TrainingArguments</code> names, as in "
                    "<code>plan.yaml</code>.</p>", _table(["argument", "value", "why"], rows))


def _write_page(path: Path, title: str, body: list[str]) -> Path:
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>")
    return write_atomic(path, page)
