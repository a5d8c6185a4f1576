"""Diagnosis: what went wrong in a run and what to change, from its curves — live or from its logs.

NumPy only: nothing here imports torch (``gradpilot diagnose`` starts in a fraction of a second).

- ``logs``: readers for the logs runs leave (CSV, JSON lines, TensorBoard, ``trainer_state.json``), each a
  ``History``; ``_columns`` recognises the columns people log.
- ``detectors``: one plain function per problem, ``(history, shape, thresholds) -> findings``, and
  ``diagnose``; ``_held_out`` the detectors on the evaluations; ``_run_shape`` what they all measure once.
- ``findings``: what a diagnosis says (``Finding``, ``Diagnosis``); ``_dialects`` says it in the words of the
  tool that wrote the log; ``signal`` smooths noisy curves.
"""

from gradpilot.diagnosis.detectors import DETECTORS, diagnose, measure
from gradpilot.diagnosis.findings import Diagnosis, Finding
from gradpilot.diagnosis.history import History, Series
from gradpilot.diagnosis.logs import find_runs, read_log

__all__ = ["DETECTORS", "Diagnosis", "Finding", "History", "Series", "diagnose", "find_runs", "measure", "read_log"]
