"""Successive halving over short runs, shared by every worker on an Optuna storage: rung k is a queue of
short-run jobs (one per candidate still in the running); when it is empty, the worker that fills the next
rung's queue first promotes the best third of the rung's scores (``promote``, a pure function). The trials of
the ``{prefix}:lr_search`` study hold each candidate's scores and cost; its runs are saved after each rung in
``folder`` and deleted as soon as they can no longer go on, so disk holds the live candidates only. The last
rung keeps its winner's run: the trunk goes on from it.

Every short run trains through ``run.start`` (the task's own trainer where it brings one). A backend only
runs a rung's jobs: by default the workers on the queue; one passed in (``RungBackend``: Ray Tune trials,
``integrations.ray_tune``) returns their results, recorded here the same way.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import optuna
import torch
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from gradpilot._direction import sort_key
from gradpilot.schedules.factor import Wsd
from gradpilot.train import run as runner
from gradpilot.train.seam import Cost, Setting, steps_for
from gradpilot.train.task import Task
from gradpilot.tuning import _optuna, budget
from gradpilot.tuning.budget import cooldown_steps
from gradpilot.tuning.folder import TuneFolder
from gradpilot.tuning.queue import Queue
from gradpilot.tuning.state import TrialRecord

# Tests only: a process given this variable SIGKILLs itself after that many short runs, right after the last
# one reported its score and before its job ended (the hardest moment to resume from), so a kill test kills
# at a known point without timing anything.
KILL_AFTER_RUNS = "GRADPILOT_TEST_KILL_AFTER_RUNS"
_RUNS_DONE = [0]


@dataclass(frozen=True)
class Candidate:
    """One setting the search tries: an LR at a micro-batch and accumulation (their product: the batch), after
    a warmup of ``warmup_steps`` optimizer steps."""

    lr: float
    micro_batch: int
    accumulation: int = 1
    warmup_steps: int = 0

    @property
    def batch(self) -> int:
        return self.micro_batch * self.accumulation

    def setting(self) -> Setting:
        return Setting(self.lr, self.micro_batch, self.accumulation, Wsd(warmup=self.warmup_steps))


@dataclass(frozen=True)
class Plan:
    """What the search will do: the candidates in the order tried, the rungs (items), the cooldown share and
    the items it may spend in all."""

    candidates: tuple[Candidate, ...]
    rungs: tuple[int, ...]
    cooldown: float
    allowance: int
    edges: tuple[tuple[int, int], ...] = ()  # (an edge candidate, the reserve beyond it): run where the edge wins

    def note(self) -> dict[str, Any]:
        """The plan as the first worker writes it for the others (JSON)."""
        return {"candidates": [[c.lr, c.micro_batch, c.accumulation, c.warmup_steps] for c in self.candidates],
                "rungs": list(self.rungs), "cooldown": self.cooldown, "allowance": self.allowance,
                "edges": [list(e) for e in self.edges]}

    @staticmethod
    def read(note: dict[str, Any]) -> Plan:
        cands = tuple(Candidate(float(lr), int(m), int(k), int(w)) for lr, m, k, w in note["candidates"])
        edges = tuple((int(e), int(r)) for e, r in note.get("edges", ()))
        return Plan(cands, tuple(int(r) for r in note["rungs"]), float(note["cooldown"]), int(note["allowance"]),
                    edges)

    def first(self) -> list[int]:
        """The candidates the first rung races: all but the reserves."""
        held = {r for _, r in self.edges}
        return [i for i in range(len(self.candidates)) if i not in held]

    def beyond(self, scores: dict[int, float], higher_is_better: bool) -> list[int]:
        """The search leaves its bracket: where the first rung's best (``scores``: candidate → score) is an LR at
        the edge of those tried, the reserve half a decade past it races too."""
        finite = {i: v for i, v in scores.items() if not math.isnan(v)}
        if not finite:
            return []
        best = min(finite, key=lambda i: sort_key(higher_is_better)(finite[i]))
        return [r for e, r in self.edges if e == best]

    def steps(self, index: int, k: int) -> tuple[int, int]:
        """Candidate ``index``'s optimizer steps at rung ``k``, and the cooldown it is scored after."""
        to = steps_for(self.rungs[k], self.candidates[index].batch)
        return to, cooldown_steps(to, self.cooldown)

    def keep(self, k: int) -> int:
        """How many saved runs rung ``k`` keeps: those that may go on, and at the last rung its winner."""
        return budget.survivors(len(self.candidates), k + 1) if k + 1 < len(self.rungs) else 1


def promote(scores: Sequence[float], *, higher_is_better: bool) -> list[int]:
    """Successive halving's rule: the positions of the best ``survivors(len(scores), 1)`` scores, best first;
    a NaN (a run that diverged) never goes on."""
    key = sort_key(higher_is_better)
    order = sorted((i for i, s in enumerate(scores) if not math.isnan(s)), key=lambda i: key(scores[i]))
    return order[:budget.survivors(len(scores), 1)]


def pays(spent: int, done_steps: int, to_step: int, cooldown: int, batch: int, allowance: int) -> bool:
    """Whether the search's allowance pays for a run at ``done_steps`` to go on to ``to_step`` and its cooldown."""
    return spent + (to_step - done_steps + cooldown) * batch <= allowance


def train_job(task: Task, plan: Plan, index: int, k: int, *, seed: int, initial: dict[str, torch.Tensor],
              load: Path | None, save: Path | None, folder: Path | None = None,
              worth_saving: Callable[[float], bool] | None = None) -> tuple[float, Cost]:
    """One job, the same on every backend: candidate ``index``'s run, from ``load`` where it was saved, trained
    on to rung ``k``, scored after its cooldown, and saved to ``save`` (where ``worth_saving(score)`` says it may
    go on). Its score and what it cost."""
    run = runner.start(task, plan.candidates[index].setting(), seed=seed, weights=initial, folder=folder)
    if load is not None:
        run.load(load)
    before = run.cost
    to, cool = plan.steps(index, k)
    run.advance(to)
    value = run.branch(cool).score.value
    if save is not None and (worth_saving is None or worth_saving(value)):
        run.save(save)
    return value, run.cost - before


Progress = Callable[[str], None]
Result = tuple[int, float, Cost, Path]  # a candidate's index, its score at the rung, what it cost, its saved run


class RungBackend(Protocol):
    """What runs a rung's jobs somewhere other than the workers on the queue (Ray Tune:
    ``integrations.ray_tune.RayBackend``): candidates ``alive`` of ``plan`` trained on to rung ``k`` by
    ``train_job``, each result with its saved run where ``halving.path`` says. The search records them."""

    def run_rung(self, halving: Halving, plan: Plan, k: int, alive: list[int]) -> Iterator[Result]: ...


class Halving:
    """Successive halving, rung by rung, shared by every worker on the storage (see the module's text)."""

    def __init__(self, storage: BaseStorage, prefix: str, task: Task, initial: dict[str, torch.Tensor], *, seed: int,
                 folder: TuneFolder, progress: Progress | None = None, wait: Callable[[], None] | None = None,
                 backend: RungBackend | None = None) -> None:
        self.storage, self.prefix, self.task, self.initial, self.seed = storage, prefix, task, initial, seed
        self.tune_folder, self.folder, self.progress, self.wait = folder, folder.search, progress, wait
        self.backend = backend
        self.folder.mkdir(parents=True, exist_ok=True)

    def study(self) -> optuna.Study:
        """The study of the candidates' scores (made by the first caller)."""
        direction: Literal["maximize", "minimize"] = "maximize" if self.task.higher_is_better else "minimize"
        return optuna.create_study(storage=self.storage, study_name=f"{self.prefix}:lr_search", direction=direction,
                                   load_if_exists=True)

    def race(self, plan: Plan) -> None:
        """Take part in every rung of ``plan``: on the queue with the other workers, or (with a backend) as the one
        driver that runs each rung there and records every result itself."""
        study = self.study()
        for k in range(len(plan.rungs)):
            if self.backend is not None:
                alive = plan.first() if k == 0 else self.halve(study, plan, k - 1)
                self._elsewhere(self.backend, study, plan, k, alive)
                if k == 0 and plan.edges:
                    self._elsewhere(self.backend, study, plan, 0, self._beyond(study, plan))
            else:
                self._rung(study, plan, k)
                if k == 0 and plan.edges:
                    self._rung(study, plan, 0, edge=True)

    def _beyond(self, study: optuna.Study, plan: Plan) -> list[int]:
        rung = plan.rungs[0]
        scores = {int(t.user_attrs["index"]): t.intermediate_values[rung] for t in study.get_trials(deepcopy=False)
                  if rung in t.intermediate_values and int(t.user_attrs["index"]) in plan.first()}
        return plan.beyond(scores, self.task.higher_is_better)

    def _rung(self, study: optuna.Study, plan: Plan, k: int, *, edge: bool = False) -> None:
        """This worker's part in rung ``k``: fill its queue if first there (with every candidate, the rung
        before's promoted, or — ``edge`` — the reserve past the first rung's best), then take its jobs until none
        is left."""
        queue = Queue(self.storage, f"{self.prefix}:lr_search:rung-{k}" + ("-edge" if edge else ""))
        if queue.claim_filling():
            alive = self._beyond(study, plan) if edge else plan.first() if k == 0 else self.halve(study, plan, k - 1)
            queue.fill([{"index": i} for i in alive])
        queue.work(functools.partial(self._rung_job, study, plan, k), self.wait)

    def _elsewhere(self, backend: RungBackend, study: optuna.Study, plan: Plan, k: int, alive: list[int]) -> None:
        done = [i for i in alive if plan.rungs[k] in self.trial(study, plan, i).intermediate_values]
        going = [i for i in alive if i not in done and self._affordable(study, plan, i, k)]
        name = type(backend).__name__
        if going and self.progress is not None:
            self.progress(f"{len(going)} short runs on {name}, rung {k + 1}")
        for index, value, cost, saved in backend.run_rung(self, plan, k, going):
            _optuna.live(study, self.trial(study, plan, index)).set_user_attr("backend", name)
            self.record(study, plan, index, k, value, cost, saved)

    def _rung_job(self, study: optuna.Study, plan: Plan, k: int, job: dict[str, Any]) -> dict[str, Any]:
        """Continue candidate ``job["index"]``'s run to rung ``k`` and score it; stop it when the budget cannot pay."""
        index = int(job["index"])
        trial = self.trial(study, plan, index)
        if plan.rungs[k] in trial.intermediate_values:  # scored before its worker was killed, before the job ended
            return {"value": trial.intermediate_values[plan.rungs[k]]}
        if not self._affordable(study, plan, index, k):
            return {"stopped": "budget"}
        cand = plan.candidates[index]
        if self.progress is not None:
            self.progress(f"lr {cand.lr:.3g}, batch {cand.batch}: {plan.rungs[k]:,} items")
        path, work = self.path(trial.number), self.tune_folder.scratch(trial.number)
        here = k > 0 and path.exists()  # a run trained on another machine is trained again here, and paid for
        value, cost = train_job(self.task, plan, index, k, seed=self.seed, initial=self.initial,
                                load=path if here else None, save=path, folder=work,
                                worth_saving=functools.partial(self._room_for, study, plan, k, trial.number))
        remove(work)  # a trainer's scratch files for this run: what goes on was saved at path
        self.record(study, plan, index, k, value, cost, path)
        _die_if_told()
        return {"value": value}

    def _affordable(self, study: optuna.Study, plan: Plan, index: int, k: int) -> bool:
        """Whether the allowance pays for candidate ``index``'s next stretch; if not, it stops here (pruned)."""
        done = plan.steps(index, k - 1)[0] if k else 0
        to, cool = plan.steps(index, k)
        if pays(spent_in(study), done, to, cool, plan.candidates[index].batch, plan.allowance):
            return True
        trial = self.trial(study, plan, index)
        _optuna.live(study, trial).set_user_attr("stopped", "budget")
        study.tell(trial.number, state=TrialState.PRUNED)
        return False

    def path(self, number: int) -> Path:
        return self.tune_folder.trial(number)

    def _room_for(self, study: optuna.Study, plan: Plan, k: int, number: int, value: float) -> bool:
        """Whether trial ``number``, scored ``value`` at rung ``k``, is among the runs that may go on past it; the
        saved runs it pushes out are deleted first, so disk never holds more than those."""
        rung, key = plan.rungs[k], sort_key(self.task.higher_is_better)
        scored = [(t.intermediate_values[rung], t.number) for t in study.get_trials(deepcopy=False)
                  if rung in t.intermediate_values and t.number != number] + [(value, number)]
        going = {n for _, n in sorted(scored, key=lambda vn: (key(vn[0]), vn[1]))[:plan.keep(k)]}
        for _, n in scored:
            if n not in going and n != number:
                remove(self.path(n))
        return number in going

    def record(self, study: optuna.Study, plan: Plan, index: int, k: int, value: float, cost: Cost,
               saved: Path | None) -> None:
        """A short run's score at rung ``k`` and what it cost, into the candidate's trial; then the saved runs
        that can no longer go on are deleted."""
        trial = self.trial(study, plan, index)
        handle = _optuna.live(study, trial)
        handle.set_user_attr("items", int(trial.user_attrs.get("items", 0)) + cost.items)
        handle.set_user_attr("seconds", float(trial.user_attrs.get("seconds", 0.0)) + cost.seconds)
        for part in ("training", "validation", "io", "validations"):
            handle.set_user_attr(part, trial.user_attrs.get(part, 0) + getattr(cost, part))
        handle.report(value, plan.rungs[k])
        if saved is not None:
            self._note_disk(study)
        self._drop_hopeless(study, plan, k)

    def _note_disk(self, study: optuna.Study) -> None:
        """The most bytes tune's saved runs (``runs/``: the initial weights, the search's runs) have held at once."""
        held = disk_bytes(self.tune_folder.runs)
        if held > int(study.user_attrs.get("peak_disk", 0)):
            study.set_user_attr("peak_disk", held)

    def _drop_hopeless(self, study: optuna.Study, plan: Plan, k: int) -> None:
        """Delete the saved runs that can no longer go on past rung ``k``: a run outside the best ``plan.keep(k)``
        scores so far never enters them (scores only add), so disk holds the live candidates only."""
        for t in self._scored(study, plan.rungs[k])[plan.keep(k):]:
            remove(self.path(t.number))

    def _scored(self, study: optuna.Study, rung: int) -> list[optuna.trial.FrozenTrial]:
        key = sort_key(self.task.higher_is_better)
        return sorted((t for t in study.get_trials(deepcopy=False) if rung in t.intermediate_values),
                      key=lambda t: key(t.intermediate_values[rung]))

    def trial(self, study: optuna.Study, plan: Plan, index: int) -> optuna.trial.FrozenTrial:
        """The candidate's trial: made on its first rung — in one storage call, params and index together, so a
        worker killed half-way leaves nothing half-made — and found again on the next ones (or after a kill)."""
        for t in study.get_trials(deepcopy=False):
            if t.user_attrs.get("index") == index:
                return t
        cand = plan.candidates[index]
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.RUNNING, params={"lr": cand.lr, "micro_batch": cand.micro_batch,
                                              "accumulation": cand.accumulation},
            distributions=DISTRIBUTIONS, user_attrs={"index": index, "warmup_steps": cand.warmup_steps}))
        return next(t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("index") == index)

    def halve(self, study: optuna.Study, plan: Plan, k: int) -> list[int]:
        """After rung ``k``: the candidates ``promote`` lets go on (their indexes, best first); the others are
        pruned and their saved runs deleted. Judged over every trial scored at the rung, so a halving cut short
        by a kill and done again decides the same."""
        scored = self._scored(study, plan.rungs[k])
        going = {scored[i].number for i in promote([t.intermediate_values[plan.rungs[k]] for t in scored],
                                                   higher_is_better=self.task.higher_is_better)}
        promoted = []
        for t in scored:
            if t.state != TrialState.RUNNING:
                continue
            if t.number not in going and t.user_attrs.get(f"rung-{k}") != "promoted":
                study.tell(t.number, state=TrialState.PRUNED)
                remove(self.path(t.number))
                continue
            _optuna.live(study, t).set_user_attr(f"rung-{k}", "promoted")
            promoted.append(int(t.user_attrs["index"]))
        return promoted

    def close(self, study: optuna.Study, winner: int) -> None:
        """The search is over: trial ``winner`` goes on (complete, at its last score); every other trial still
        running stops here (pruned)."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number == winner and t.intermediate_values:
                study.tell(t.number, t.intermediate_values[max(t.intermediate_values)])
            else:
                study.tell(t.number, state=TrialState.PRUNED)


DISTRIBUTIONS = {"lr": optuna.distributions.FloatDistribution(1e-12, 1e6, log=True),
                 "micro_batch": optuna.distributions.IntDistribution(1, 1 << 30),
                 "accumulation": optuna.distributions.IntDistribution(1, 1 << 20)}


def best(study: optuna.Study, higher_is_better: bool) -> tuple[optuna.trial.FrozenTrial, float, int]:
    """The trial with the best score at the longest rung any trial reached: (trial, score, rung)."""
    scored = [t for t in study.trials if t.intermediate_values]
    if not scored:
        raise ValueError("no trial reached its first rung")
    top = max(max(t.intermediate_values) for t in scored)
    at_top = [t for t in scored if top in t.intermediate_values]
    key = sort_key(higher_is_better)
    winner = min(at_top, key=lambda t: key(t.intermediate_values[top]))
    return winner, winner.intermediate_values[top], top


def trial_records(study: optuna.Study) -> list[TrialRecord]:
    """Every trial, for tune.json: its setting, state, score per rung, items trained and seconds."""
    return [TrialRecord(t.number, float(t.params.get("lr", math.nan)),
                        int(t.params.get("micro_batch", 0)) * int(t.params.get("accumulation", 1)),
                        t.state.name.lower(), {str(k): v for k, v in sorted(t.intermediate_values.items())},
                        int(t.user_attrs.get("items", 0)), round(float(t.user_attrs.get("seconds", 0.0)), 3),
                        str(t.user_attrs.get("stopped", ""))) for t in study.trials]


def spent_in(study: optuna.Study) -> int:
    """Samples trained by every trial so far, those a kill cut short included."""
    return sum(int(t.user_attrs.get("items", 0)) for t in study.get_trials(deepcopy=False))


def seconds_in(study: optuna.Study) -> dict[str, float]:
    """Seconds every trial spent, by what they went on, and their validation passes (``validations``)."""
    trials = study.get_trials(deepcopy=False)
    parts = ("training", "validation", "io", "validations")
    return {part: sum(t.user_attrs.get(part, 0) for t in trials) for part in parts}


def remove(path: Path) -> None:
    """A saved run, a file or a trainer's folder."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def disk_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _die_if_told() -> None:
    _RUNS_DONE[0] += 1
    if _RUNS_DONE[0] == int(os.environ.get(KILL_AFTER_RUNS, "0")):
        os.kill(os.getpid(), signal.SIGKILL)
