"""The LR search's short runs on Ray (``tune(backend="ray")``, ``gradpilot tune --backend ray``).

Each rung of the successive halving is one Ray Tune experiment, its trials proposed by Optuna's search
(``OptunaSearch``, given the candidates still in the running as the points to evaluate). Each trial is a
Ray task on whatever cluster ``ray.init`` joins: it continues its run from the checkpoint of the rung
before, trains to this rung, scores after the cooldown and reports with a new checkpoint. Between rungs the
search's Optuna study decides, with the same ``SuccessiveHalvingPruner`` as the built-in search, which
trials go on; so the decisions are those the built-in search would make, and the rest of tune reads the
study as it reads its own.

Needs the ``ray`` extra: ``pip install 'gradpilot[ray]'``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch

from gradpilot.errors import GradpilotError, first_line

if TYPE_CHECKING:
    from gradpilot._search import Search, SearchPlan


def run_search(search: Search, study: optuna.Study, plan: SearchPlan, allowance: int,
               address: str | None) -> None:
    """Run ``plan``'s successive halving with each rung's short runs as Ray Tune trials; scores go to ``study``."""
    from gradpilot._search import spent_in

    ray, tune = _import_ray()
    started = _init(ray, address)
    try:
        alive, saved = list(range(len(plan.candidates))), {}  # type: list[int], dict[int, Any]
        for k, rung in enumerate(plan.rungs):
            alive = _affordable(search, study, plan, alive, k, allowance - spent_in(study))
            if alive:
                with contextlib.redirect_stdout(sys.stderr):  # Ray Tune's tables: stdout is for tune's own output
                    grid = _rung(tune, search, plan, k, alive, saved).fit()
                for result in grid:
                    _record(search, study, plan, rung, result, saved)
            if k + 1 < len(plan.rungs):
                alive = search._halve(study, plan, k)
    finally:
        if started:
            ray.shutdown()


def _import_ray() -> tuple[Any, Any]:
    try:
        import ray
        from ray import tune
    except ImportError:
        raise GradpilotError("--backend ray needs Ray Tune: pip install 'gradpilot[ray]'") from None
    return ray, tune


def _init(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address`` (``auto``: the one this machine belongs to) or start a local Ray."""
    if ray.is_initialized():
        return False
    for name in [n for n in sys.modules if n.startswith("gradpilot_task_")]:  # a task file is not importable there
        ray.cloudpickle.register_pickle_by_value(sys.modules[name])  # Ray's own pickler: by value, not by import
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise GradpilotError(f"cannot start or join Ray at {address or 'a local instance'}: "
                             f"{first_line(exc)}") from None
    return True


def _affordable(search: Search, study: optuna.Study, plan: SearchPlan, alive: list[int], k: int,
                left: int) -> list[int]:
    """The candidates whose next stretch (and its cooldown) the budget still pays for, in the order given;
    the rest stop here, as the built-in search stops them."""
    step = plan.rungs[k] - (plan.rungs[k - 1] if k else 0)
    keep = []
    for index in alive:
        cost = step + max(plan.candidates[index].batch, round(plan.cooldown * plan.rungs[k]))
        if cost <= left:
            keep.append(index)
            left -= cost
            continue
        trial = search._trial(study, plan.candidates[index], index)
        trial.set_user_attr("stopped", "budget")
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return keep


def _rung(tune: Any, search: Search, plan: SearchPlan, k: int, alive: list[int], saved: dict[int, Any]) -> Any:
    from ray.tune.search.optuna import OptunaSearch

    trainable = tune.with_parameters(_short_run, task=search.task, initial=search.initial, plan=plan, k=k,
                                     seed=search.seed, checkpoints={i: saved[i] for i in alive if i in saved})
    searcher = OptunaSearch(space={"index": optuna.distributions.CategoricalDistribution(alive)}, metric="score",
                            mode="max" if search.task.higher_is_better else "min", seed=search.seed,
                            points_to_evaluate=[{"index": i} for i in alive])  # each candidate once, as planned
    return tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=len(alive)),
        run_config=tune.RunConfig(name=f"lr_search-rung-{k}", storage_path=str((search.folder / "ray").resolve()),
                                  verbose=0),
    )


def _short_run(config: dict[str, Any], *, task: Any, initial: dict[str, torch.Tensor], plan: SearchPlan, k: int,
               seed: int, checkpoints: dict[int, Any]) -> None:
    """One candidate in a Ray worker: continue from its last rung, train to rung ``k``, score, report."""
    from ray import tune

    from gradpilot._search import setting
    from gradpilot.runner import LocalRun

    torch.set_num_threads(1)
    index = int(config["index"])
    cand = plan.candidates[index]
    run = LocalRun(task, setting(cand, plan), seed=seed, weights=initial)
    if index in checkpoints:
        with checkpoints[index].as_directory() as folder:
            run.load(Path(folder) / "run.pt")
    before = run.cost.samples
    run.advance(plan.rungs[k])
    value = run.score(max(cand.batch, round(plan.cooldown * plan.rungs[k])))
    with tempfile.TemporaryDirectory() as folder:
        run.save(Path(folder) / "run.pt")
        tune.report({"score": value, "index": index, "spent": run.cost.samples - before},
                    checkpoint=tune.Checkpoint.from_directory(folder))


def _record(search: Search, study: optuna.Study, plan: SearchPlan, rung: int, result: Any,
            saved: dict[int, Any]) -> None:
    """A Ray trial's score at ``rung``, reported to the candidate's trial in the study with the samples it cost."""
    if result.metrics is None or "index" not in result.metrics:
        raise GradpilotError(f"a short run on Ray failed: {first_line(result.error) if result.error else 'no result'}")
    index = int(result.metrics["index"])
    trial = search._trial(study, plan.candidates[index], index)
    done = study._storage.get_trial(trial._trial_id).user_attrs.get("samples", 0)
    trial.set_user_attr("samples", int(done) + int(result.metrics["spent"]))
    trial.set_user_attr("backend", "ray")
    trial.report(float(result.metrics["score"]), rung)
    saved[index] = result.checkpoint
