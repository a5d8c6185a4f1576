"""The names gradpilot exports: one per concept, each importable from the top level without importing torch
until it is used, and the module names a user imports."""

import subprocess
import sys

import gradpilot


def test_every_exported_name_resolves_to_its_home():
    from gradpilot import scaling
    from gradpilot.batch import finder as batch_size
    from gradpilot.diagnosis import history
    from gradpilot.train import fitting as training
    from gradpilot.train import monitor
    from gradpilot.tuning import state

    for name in gradpilot.__all__:
        assert getattr(gradpilot, name) is not None, name
    assert gradpilot.Stage is state.Stage and gradpilot.BatchTrial is batch_size.BatchTrial
    assert gradpilot.BatchPlan is scaling.BatchPlan and gradpilot.Action is monitor.Action
    assert gradpilot.Series is history.Series and gradpilot.FitConfig is training.FitConfig


def test_no_module_shadows_the_function_of_its_concept():
    import gradpilot.diagnosis as d  # imported, a module is an attribute of the package: its name must not be taken
    import gradpilot.probing as p
    import gradpilot.train as f
    import gradpilot.tuning as t

    assert callable(gradpilot.diagnose) and d.diagnose is gradpilot.diagnose
    assert callable(gradpilot.probe) and p.probe is gradpilot.probe and callable(f.fit) and f.fit is gradpilot.fit
    assert callable(gradpilot.tune) and gradpilot.tune is t.tune  # the README's gradpilot.tune(task, ...)
    for name in gradpilot.__all__:
        assert not isinstance(getattr(gradpilot, name), type(gradpilot)) or name == "scaling", name


def test_reading_and_diagnosing_logs_imports_no_torch():
    code = ("import sys, gradpilot, gradpilot.diagnosis.detectors, gradpilot.diagnosis.logs, gradpilot._files\n"
            "from gradpilot import Series, History, Diagnosis, Finding, read_log, diagnose\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
