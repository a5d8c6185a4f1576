"""The few uses of Optuna beyond its public API (``gradpilot.tuning._optuna``), pinned to the versions they
are written for: a new Optuna outside that range fails here first, by name."""

from __future__ import annotations

import optuna

from gradpilot.tuning import _optuna


def test_the_installed_optuna_is_one_the_helpers_are_written_for():
    version = tuple(int(x) for x in optuna.__version__.split(".")[:2])
    low, high = _optuna.SUPPORTED
    assert low <= version < high, f"optuna {optuna.__version__}: check gradpilot/tuning/_optuna.py against it"


def test_a_trial_made_elsewhere_can_be_reported_to_and_read_back(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1)
    study = optuna.create_study(storage=storage, study_name="s")
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, params={},
                                              distributions={}, user_attrs={"index": 3}))
    made = study.get_trials()[0]
    handle = _optuna.live(study, made)
    handle.report(0.5, 10)
    handle.set_user_attr("seen", True)
    again = _optuna.frozen(study, made.number)
    assert again.intermediate_values == {10: 0.5} and again.user_attrs["seen"] is True
    with _optuna.beating(study, handle):  # a heartbeat while the block runs
        pass
    assert storage.get_trial(made._trial_id).state == optuna.trial.TrialState.RUNNING
    assert _optuna.storage_url(storage) == f"sqlite:///{tmp_path / 's.db'}"
    assert _optuna.storage_url(optuna.storages.InMemoryStorage()) is None
