"""``tune``, by concept: ``driver`` (the function and its loop over the stages), ``context`` (what a tune works on,
and where it stands after each stage), ``state`` (each stage's typed decision and evidence), ``fixed`` (the plan
values kept as given), ``folder`` (where its files live), ``budget`` (the budget policy, in plain numbers),
``stages`` (clock, range test, batch, accumulation), ``search`` and ``halving`` (the LR search and its
successive halving), ``trunk`` (the winner continued, its cooldown branches, the schedule), ``plan`` (the plan
in ``TrainingArguments`` names), ``record`` (``tune.json``, typed, and the folder's checks and outputs),
``queue`` and ``local_workers`` (work shared through an Optuna storage), ``view`` (how the command line shows
it). The records (``state``, ``fixed``, ``folder``) import no torch; ``tune`` loads it when used."""

from typing import TYPE_CHECKING

from gradpilot import _lazy
from gradpilot.tuning.fixed import FIXABLE, Fixed
from gradpilot.tuning.state import Stage

if TYPE_CHECKING:
    from gradpilot.tuning.budget import parse_duration
    from gradpilot.tuning.driver import TuneResult, tune

__all__ = ["FIXABLE", "Fixed", "Stage", "TuneResult", "parse_duration", "tune"]
__getattr__ = _lazy.exports(__name__, {"TuneResult": "driver", "parse_duration": "budget", "tune": "driver"})
