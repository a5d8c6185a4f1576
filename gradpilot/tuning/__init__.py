"""``tune``, by concept: ``driver`` (the function and its loop over the stages), ``state`` (each stage's typed
decision), ``budget`` (the budget policy, in plain numbers), ``stages`` (clock, range test, batch,
accumulation), ``search`` and ``halving`` (the LR search and its successive halving), ``trunk`` (the winner
continued, its cooldown branches, the schedule), ``plan`` (the plan in ``TrainingArguments`` names), ``record``
(the folder and its outputs), ``queue`` and ``local_workers`` (work shared through an Optuna storage), ``view``
(how the command line shows it)."""

from gradpilot.tuning.driver import FIXABLE, TuneResult, parse_duration, tune
from gradpilot.tuning.state import Stage

__all__ = ["FIXABLE", "Stage", "TuneResult", "parse_duration", "tune"]
