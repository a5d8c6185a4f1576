"""The names gradpilot exports: one per concept, each importable from the top level without importing torch
until it is used, and the module names a user imports."""

import subprocess
import sys

import gradpilot


def test_every_exported_name_resolves_to_its_home():
    from gradpilot import _stages, batch_size, history, monitor, scaling, training

    for name in gradpilot.__all__:
        assert getattr(gradpilot, name) is not None, name
    assert gradpilot.Stage is _stages.Stage and gradpilot.BatchTrial is batch_size.BatchTrial
    assert gradpilot.BatchPlan is scaling.BatchPlan and gradpilot.Action is monitor.Action
    assert gradpilot.Series is history.Series and gradpilot.FitConfig is training.FitConfig


def test_the_diagnosis_module_is_a_module_and_diagnose_a_function():
    import gradpilot.diagnosis as d

    assert d.__name__ == "gradpilot.diagnosis" and callable(gradpilot.diagnose) and d.diagnose is gradpilot.diagnose


def test_reading_and_diagnosing_logs_imports_no_torch():
    code = ("import sys, gradpilot, gradpilot.diagnosis, gradpilot.logs, gradpilot._files\n"
            "from gradpilot import Series, History, Diagnosis, Finding, read_log, diagnose\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
