"""LR schedules: the one LR function every warmup and decay gradpilot trains with (``factor``: pure math), and
the schedules ``fit``, ``gradpilot schedule`` and the runners know by name (``builders``, on
``torch.optim.lr_scheduler``). Importing this package imports no torch; the builders load it when used."""

from typing import TYPE_CHECKING

from gradpilot import _lazy
from gradpilot.schedules.factor import DECAY_TYPES, FOREVER, DecayType, Wsd, wsd

if TYPE_CHECKING:
    from gradpilot.schedules.builders import BUILDERS, Schedule, lr_curve, make_schedule, wrap

__all__ = ["BUILDERS", "DECAY_TYPES", "FOREVER", "DecayType", "Schedule", "Wsd", "lr_curve", "make_schedule", "wrap",
           "wsd"]
__getattr__ = _lazy.exports(__name__, dict.fromkeys(("BUILDERS", "Schedule", "lr_curve", "make_schedule", "wrap"),
                                                   "builders"))
