"""Every LR schedule gradpilot knows by name — what ``fit`` trains, ``gradpilot schedule`` draws and a plan may
hold — with the options each takes. One registry: the builders (``builders.BUILDERS``) are checked against it
when imported, and the command line reads it without importing torch.

Pure Python. Adding a schedule is adding its entry here and its builder in ``builders``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gradpilot.errors import GradpilotError


@dataclass(frozen=True)
class Entry:
    """A schedule by name: its options, whether it steps every optimizer step or every epoch, what it does (one
    line), and whether transformers' ``get_scheduler`` knows it by this name with these options (a plan may
    hold it as ``lr_scheduler_type``)."""

    name: str
    options: tuple[str, ...]
    interval: Literal["step", "epoch"]
    what: str
    transformers: bool = False


CATALOG: dict[str, Entry] = {e.name: e for e in (
    Entry("constant", (), "step", "the LR as given", transformers=True),
    Entry("step", ("step_size", "gamma"), "epoch", "torch's StepLR: × gamma every step_size epochs"),
    Entry("cosine", ("T_max", "eta_min"), "step", "torch's CosineAnnealingLR: half a cosine over T_max (the run)"),
    Entry("plateau", ("mode", "patience", "factor", "min_lr"), "epoch",
          "torch's ReduceLROnPlateau, fed the validation metric in its direction"),
    Entry("onecycle", ("max_lr", "pct_start", "div_factor", "final_div_factor"), "step", "torch's OneCycleLR"),
    Entry("warmup_cosine", ("warmup_ratio", "warmup_steps", "eta_min"), "step",
          "linear warmup, then half a cosine to eta_min (torch's LinearLR then CosineAnnealingLR)"),
    Entry("constant_with_warmup", ("warmup_steps",), "step", "transformers': linear warmup from 0, then constant",
          transformers=True),
    Entry("linear", ("warmup_steps",), "step", "transformers': warmup, then a straight line to 0 at the end",
          transformers=True),
    Entry("cosine_with_min_lr", ("warmup_steps", "min_lr", "min_lr_rate"), "step",
          "transformers': warmup from 0, then half a cosine to min_lr (or min_lr_rate × the LR)", transformers=True),
    Entry("warmup_stable_decay", ("warmup_steps", "num_decay_steps", "num_stable_steps", "decay_type",
                                  "min_lr_ratio"), "step",
          "transformers' (what tune's plans hold): warmup, the peak held, then a decay over the last "
          "num_decay_steps to min_lr_ratio × the LR; the stable phase is what the run's length leaves",
          transformers=True),
)}
NAMES: tuple[str, ...] = tuple(CATALOG)


def entry(name: str) -> Entry:
    """The schedule named ``name``; an unknown name lists the known ones."""
    try:
        return CATALOG[name]
    except KeyError:
        raise GradpilotError(f"unknown scheduler {name!r}; choose one of {', '.join(NAMES)}") from None
