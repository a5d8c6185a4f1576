"""The learning rate: the range test (``range_test``: sweep the LR, watch the loss, state restored exactly) and
the rules that read its curve (``suggest``: NumPy only). Importing this package imports no torch; the range
test loads it when used."""

from typing import TYPE_CHECKING

from gradpilot import _lazy
from gradpilot.lr.suggest import DEFAULT_RULE, RULES, Curve

if TYPE_CHECKING:
    from gradpilot.lr.range_test import LRFinderResult, find_lr

__all__ = ["DEFAULT_RULE", "RULES", "Curve", "LRFinderResult", "find_lr"]
__getattr__ = _lazy.exports(__name__, {"LRFinderResult": "range_test", "find_lr": "range_test"})
