"""How tune shows its work: a bar on a terminal, one line per step of the work off one."""

import io

from rich.console import Console

from gradpilot._tune_view import budget_bar


def test_off_a_terminal_each_new_step_is_one_line_with_the_budget_spent():
    out = io.StringIO()
    with budget_bar(Console(file=out, force_terminal=False), 3.0) as progress:
        progress("range test, 31 steps", 0.0)
        progress("range test, 31 steps", 0.1)  # the same step again: no new line
        progress("lr 0.01 [batch 32]: 182 samples", 1.25)  # brackets are text, not markup
        progress("schedule", 9.0)  # never shown past the budget
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("tune 0.00/3 runs, ") and lines[0].endswith(" s: range test, 31 steps")
    assert lines[1].endswith("lr 0.01 [batch 32]: 182 samples") and lines[2].startswith("tune 3.00/3 runs")


def test_disabled_it_prints_nothing_and_on_a_terminal_it_draws_a_bar():
    out = io.StringIO()
    with budget_bar(Console(file=out, force_terminal=False), 3.0, disable=True) as progress:
        progress("range test", 0.5)
    assert out.getvalue() == ""
    live = io.StringIO()
    with budget_bar(Console(file=live, force_terminal=True, width=100), 3.0) as progress:
        progress("range test", 1.5)
    assert "range test" in live.getvalue() and "1.50/3 runs" in live.getvalue()


def test_the_summary_says_each_stage_s_cost_in_runs_and_seconds(tmp_path):
    from torch import nn

    from gradpilot._tune_view import summary
    from gradpilot.tuning import Stage, TuneResult

    stages = (Stage("lr_range", {}, "the curve supports 0.01", samples=500, seconds=1.25),
              Stage("lr_search", {}, "5 short runs", samples=2000, seconds=8.5))
    out = io.StringIO()
    summary(TuneResult({"learning_rate": 0.01}, stages, 3.0, 2.5, 0.9, nn.Linear(1, 1), tmp_path, 1000),
            Console(file=out, width=120, force_terminal=False))
    text = out.getvalue()
    assert "2.50 of 3 runs spent, 10 s" in text and "8.5" in text and "2.00" in text
