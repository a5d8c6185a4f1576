"""How tune shows its work: a bar on a terminal, one line per step of the work off one."""

import io

from rich.console import Console

from gradpilot.tuning.view import budget_bar


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


def test_a_time_budget_shows_the_runs_spent_without_a_total():
    out = io.StringIO()
    with budget_bar(Console(file=out, force_terminal=False), None) as progress:
        progress("range test", 0.25)
    assert out.getvalue().startswith("tune 0.25 runs, ")


def test_the_summary_says_each_stage_s_cost_in_runs_and_seconds(tmp_path):
    from torch import nn

    from gradpilot.train.seam import Cost
    from gradpilot.tuning import Stage, TuneResult
    from gradpilot.tuning.view import summary

    stages = (Stage("lr_range", None, "the curve supports 0.01", spent=Cost(500, 1.0, 0.0, 0.0, 0.25)),
              Stage("lr_search", None, "5 short runs", spent=Cost(2000, 6.0, 2.0, 0.5, 0.0)))
    out = io.StringIO()
    result = TuneResult({"learning_rate": 0.01}, stages, 3.0, 2.5, 0.9, nn.Linear(1, 1), tmp_path, 1000,
                        run_seconds=4.0, seconds=10.5, spent_items=2.5)
    summary(result, Console(file=out, width=160, force_terminal=False))
    text = out.getvalue()
    assert "2.50 of 3 runs spent (2.50 runs of items; one run ≈ 4 s; 10 s of work)" in text
    assert "8.5" in text and "2.12" in text  # 8.5 s of the search's, over a 4 s run
    assert "6.0 / 2.0 / 0.5 / 0.0" in text  # training / validation / i/o / other (train/val/io/other)
    paid = TuneResult({"learning_rate": 0.01}, stages, 3.0, 2.5, 0.9, nn.Linear(1, 1), tmp_path, 1000, run_seconds=4.0,
                      seconds=10.5, spent_items=2.5, wall_seconds=12.0, process_seconds=16.0)
    out = io.StringIO()
    summary(paid, Console(file=out, width=200, force_terminal=False))
    assert "the command took 16.0 s = 4.00 runs of wall time" in " ".join(out.getvalue().split())  # start-up included
