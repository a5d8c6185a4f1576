"""The LR search's short runs on Ray: ``tune(task, backend=RayBackend())``, ``gradpilot tune --backend ray``.

A backend only runs a rung's jobs: each rung of the successive halving is one Ray Tune experiment with a
trial per candidate still in the running. Each trial is a Ray task on whatever cluster ``ray.init`` joins and
runs the very job the built-in workers run (``halving.train_job``: the task's own runner, from the run saved
at the rung before, on to this rung, scored after its cooldown); it reports its score and cost, and hands its
saved run back as a Ray checkpoint. The search records the results, promotes and deletes exactly as it does
for its own workers, so the decisions are the built-in search's.

Needs the ``ray`` extra: ``pip install 'gradpilot[ray]'``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gradpilot.errors import GradpilotError, first_line
from gradpilot.train.seam import Cost

if TYPE_CHECKING:
    from gradpilot.tuning.halving import Halving, Plan, Result


class RayBackend:
    """Runs each rung of tune's LR search as a Ray Tune experiment (``halving.RungBackend``), on a local Ray or
    the cluster at ``address`` (``auto``: the one this machine belongs to)."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address

    def run_rung(self, halving: Halving, plan: Plan, k: int, alive: list[int]) -> Iterator[Result]:
        return run_rung(halving, plan, k, alive, self.address)


def run_rung(halving: Halving, plan: Plan, k: int, alive: list[int],
             address: str | None) -> Iterator[Result]:
    """Candidates ``alive`` trained on to rung ``k`` as Ray Tune trials: (index, score, cost, saved run) each,
    the saved run copied to where the search keeps it."""
    if not alive:
        return
    ray, tune = _import_ray()
    _init(ray, address)
    study = halving.study()
    numbers = {i: halving.trial(study, plan, i).number for i in alive}
    saved = {i: _pack(halving.path(numbers[i])) for i in alive if k and halving.path(numbers[i]).exists()}
    trainable = tune.with_parameters(_short_run, task=halving.task, initial=halving.initial, plan=plan, k=k,
                                     seed=halving.seed, saved=saved)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"index": tune.grid_search(alive)},
        run_config=tune.RunConfig(name=f"lr_search-rung-{k}", storage_path=str((halving.folder / "ray").resolve()),
                                  verbose=0))
    with contextlib.redirect_stdout(sys.stderr):  # Ray Tune's tables: stdout is for tune's own output
        grid = tuner.fit()
    for result in grid:
        if result.metrics is None or "index" not in result.metrics:
            raise GradpilotError("a short run on Ray failed: "
                                 f"{first_line(result.error) if result.error else 'no result'}")
        index = int(result.metrics["index"])
        target = halving.path(numbers[index])
        with result.checkpoint.as_directory() as folder:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(Path(folder) / "run", target)
        cost = Cost.from_json(result.metrics)
        yield index, float(result.metrics["score"]), cost, target


def _pack(folder: Path) -> dict[str, bytes]:
    """A saved run (a folder) as its files' bytes, to travel to a Ray worker with the trainable."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _unpack(files: dict[str, bytes], folder: Path) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def _import_ray() -> tuple[Any, Any]:
    try:
        import ray
        from ray import tune
    except ImportError:
        raise GradpilotError("--backend ray needs Ray Tune: pip install 'gradpilot[ray]'") from None
    return ray, tune


def _init(ray: Any, address: str | None) -> None:
    """Join the cluster at ``address`` (``auto``: the one this machine belongs to) or start a local Ray, once; a
    Ray this started is shut down when the process ends."""
    if ray.is_initialized():
        return
    for name in [n for n in sys.modules if n.startswith("gradpilot_task_")]:  # a task file is not importable there
        ray.cloudpickle.register_pickle_by_value(sys.modules[name])  # Ray's own pickler: by value, not by import
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise GradpilotError(f"cannot start or join Ray at {address or 'a local instance'}: "
                             f"{first_line(exc)}") from None
    atexit.register(ray.shutdown)


def _short_run(config: dict[str, Any], *, task: Any, initial: dict[str, torch.Tensor], plan: Plan, k: int,
               seed: int, saved: dict[int, dict[str, bytes]]) -> None:
    """One candidate in a Ray worker: the search's own job, from the run it had at the last rung."""
    from ray import tune

    from gradpilot.tuning.halving import train_job

    torch.set_num_threads(1)
    index = int(config["index"])
    with tempfile.TemporaryDirectory() as folder:
        start, out = Path(folder) / "start", Path(folder) / "out"
        if index in saved:
            _unpack(saved[index], start)
        out.mkdir()
        value, cost = train_job(task, plan, index, k, seed=seed, initial=initial,
                                load=start if index in saved else None, save=out / "run")
        tune.report({"score": value, "index": index, **cost.to_json()},
                    checkpoint=tune.Checkpoint.from_directory(out))
