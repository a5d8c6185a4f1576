"""The budgeted LR search inside ``tune``: short real runs of a few candidate (LR, batch) pairs, compared by
successive halving (``promote``: the best third of a rung go on) on an Optuna study, whose storage keeps the
trials for a resume and shares the runs between workers.

A short run at a constant LR favours an LR that is too small: it is judged before a larger LR's noise has been
annealed away. So each rung is scored after a brief cooldown — a branch that decays the LR linearly to 0 over
``cooldown`` × the rung's length, is validated, and is thrown away (Hägele et al. 2024) — and the run then
goes on from where it was, at its constant LR.
"""

from __future__ import annotations

import functools
import math
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from gradpilot._direction import sort_key
from gradpilot._workers import Queue
from gradpilot.runner import LocalRun, Setting
from gradpilot.task import Task

# Tests only: a process given this variable SIGKILLs itself after that many short runs, right after the last
# one reported its score and before its job ended (the hardest moment to resume from), so a kill test kills
# at a known point without timing anything.
KILL_AFTER_RUNS = "GRADPILOT_TEST_KILL_AFTER_RUNS"
_RUNS_DONE = [0]

ETA = 3  # successive halving promotes a third of the candidates at each rung
RUNGS = 2  # rungs at r and 3r samples: a first rung long enough to tell LRs apart


@dataclass(frozen=True)
class Candidate:
    """One setting the search tries: an LR at a micro-batch and accumulation (their product: the batch)."""

    lr: float
    micro_batch: int
    accumulation: int = 1
    warmup_ratio: float = 0.0  # share of the longest rung spent warming up (when the batch grew)

    @property
    def batch(self) -> int:
        return self.micro_batch * self.accumulation


@dataclass(frozen=True)
class SearchPlan:
    """What the search will do: the candidates in the order tried, the rungs (samples) and the cooldown share."""

    candidates: tuple[Candidate, ...]
    rungs: tuple[int, ...]
    cooldown: float


def lr_grid(center: float, ceiling: float, points: int = 5, floor: float = 0.0) -> list[float]:
    """``points`` LRs half a decade apart around ``center``, none above ``ceiling`` and, where they fit below it,
    none below ``floor``: center first, then its neighbours outwards, so the promising ones run first (an
    asynchronous halving favours early trials)."""
    half = (points - 1) // 2
    grid = [center * 10 ** (k / 2) for k in range(-half, points - half)]
    while grid[-1] > ceiling * 1.0001 and grid[0] > center / 1e3:
        grid = [lr / math.sqrt(10) for lr in grid]  # slide below the edge rather than lose candidates
    while grid[0] < floor / 1.0001 and grid[-1] * math.sqrt(10) <= ceiling * 1.0001:
        grid = [lr * math.sqrt(10) for lr in grid]  # and up into the range the curve supports
    return sorted(grid, key=lambda lr: (abs(math.log10(lr / center)), -lr))


def survivors(candidates: int, rung: int) -> int:
    """How many of ``candidates`` reach rung ``rung`` (0: the first) of successive halving: a third go on at
    each rung, at least one."""
    return max(1, candidates // int(ETA**rung))


def promote(scores: Sequence[float], *, higher_is_better: bool) -> list[int]:
    """Successive halving's rule: the positions of the best ``survivors(len(scores), 1)`` scores, best first;
    a NaN (a run that diverged) never goes on."""
    key = sort_key(higher_is_better)
    order = sorted((i for i, s in enumerate(scores) if not math.isnan(s)), key=lambda i: key(scores[i]))
    return order[:survivors(len(scores), 1)]


def rungs_for(budget_samples: int, candidates: int, cooldown: float, smallest: int,
              longest: int | None = None) -> tuple[int, ...]:
    """Rung lengths r, 3r, 9r (samples) such that halving ``candidates`` — a third go on at each rung, at
    least one — fits ``budget_samples``, cooldowns included; ``smallest`` is the largest batch tried. The last
    rung is never longer than ``longest`` (one run of the task: a short run longer than the run it stands for
    tells nothing more, so a budget beyond that is left unspent)."""
    alive = [survivors(candidates, k) for k in range(RUNGS)]
    unit = sum(n * (ETA**k - (ETA ** (k - 1) if k else 0) + cooldown * ETA**k) for k, n in enumerate(alive))
    rounding = 2 * smallest * sum(alive)  # each stretch of training and each cooldown ends on a whole batch
    first = max(smallest, int((budget_samples - rounding) / unit))
    if longest is not None:
        first = max(smallest, min(first, longest // ETA ** (RUNGS - 1)))
    return tuple(first * ETA**k for k in range(RUNGS))


def _die_if_told() -> None:
    _RUNS_DONE[0] += 1
    if _RUNS_DONE[0] == int(os.environ.get(KILL_AFTER_RUNS, "0")):
        os.kill(os.getpid(), signal.SIGKILL)


Progress = Callable[[str], None]


class Search:
    """Successive halving, rung by rung, shared by every worker on the storage. Rung k is a queue of short-run
    jobs (one per candidate still in the running); when it is empty, the worker that fills the next rung's
    queue first asks, best first, each scored trial whether the study's ``SuccessiveHalvingPruner`` lets it
    go on. The trials of the ``{prefix}:lr_search`` study hold each candidate's scores; its runs are saved
    after each rung in ``folder``, so a rung continues where the last one stopped (a worker that lacks the
    file — another machine — trains the run again from the start, and pays for it)."""

    def __init__(self, storage: BaseStorage, prefix: str, task: Task, initial: dict[str, torch.Tensor], *, seed: int,
                 folder: Path, progress: Progress | None = None, wait: Callable[[], None] | None = None,
                 ray_address: str | None = None, on_ray: bool = False) -> None:
        self.storage, self.prefix, self.task, self.initial, self.seed = storage, prefix, task, initial, seed
        self.folder, self.progress, self.wait = folder, progress, wait
        self.on_ray, self.ray_address = on_ray, ray_address
        folder.mkdir(parents=True, exist_ok=True)

    def study(self) -> optuna.Study:
        """The study of the candidates' scores (made by the first caller)."""
        direction: Literal["maximize", "minimize"] = "maximize" if self.task.higher_is_better else "minimize"
        return optuna.create_study(storage=self.storage, study_name=f"{self.prefix}:lr_search", direction=direction,
                                   load_if_exists=True)

    def run(self, make_plan: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Take part in every rung; ``make_plan`` is called by the one worker that starts the search. Returns
        the plan's note (``{"skipped": why}`` when there is no search)."""
        first = Queue(self.storage, f"{self.prefix}:lr_search:rung-0")
        if first.claim_filling():
            self._start(first, make_plan())
        note = first.note(self.wait)
        if "skipped" in note or "ran_on" in note:
            return note
        plan, allowance = _plan(note), int(note["allowance"])
        study = self.study()
        for k in range(len(plan.rungs)):
            queue = first if k == 0 else Queue(self.storage, f"{self.prefix}:lr_search:rung-{k}")
            if k and queue.claim_filling():
                queue.fill([{"index": i} for i in self._halve(study, plan, k - 1)])
            queue.work(functools.partial(self._rung_job, study, plan, k, allowance), self.wait)
        return note

    def _start(self, first: Queue, note: dict[str, Any]) -> None:
        """The starting worker's part: fill the first rung with every candidate, or run the whole search on
        Ray and leave the rung empty (its note says so)."""
        if self.on_ray and "skipped" not in note:
            self._on_ray(note)
            note["ran_on"] = "ray"
        runs_here = "ran_on" not in note
        first.fill([{"index": i} for i in range(len(note.get("candidates", [])))] if runs_here else [], note)

    def _on_ray(self, note: dict[str, Any]) -> None:
        """The whole search as Ray Tune trials, recorded in the study (see gradpilot.integrations.ray_tune)."""
        from gradpilot.integrations.ray_tune import run_search

        plan = _plan(note)
        if self.progress is not None:
            self.progress(f"{len(plan.candidates)} short runs on Ray")
        run_search(self, self.study(), plan, int(note["allowance"]), self.ray_address)

    def close(self, study: optuna.Study) -> None:
        """Tell every trial still running its last score (the search is over)."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.intermediate_values:
                study.tell(t.number, t.intermediate_values[max(t.intermediate_values)])
            else:
                study.tell(t.number, state=TrialState.PRUNED)

    def _rung_job(self, study: optuna.Study, plan: SearchPlan, k: int, allowance: int,
                  job: dict[str, Any]) -> dict[str, Any]:
        return self._job(study, plan, int(job["index"]), k, allowance)

    def _job(self, study: optuna.Study, plan: SearchPlan, index: int, k: int, allowance: int) -> dict[str, Any]:
        """Continue candidate ``index``'s run to rung ``k`` and score it; stop it when the budget cannot pay."""
        cand, rung = plan.candidates[index], plan.rungs[k]
        trial = self._trial(study, cand, index)
        reported = study._storage.get_trial(trial._trial_id).intermediate_values
        if rung in reported:  # scored before its worker was killed, between the report and the job's end
            return {"value": reported[rung]}
        path = self.folder / f"trial-{trial.number}.pt"
        run = LocalRun(self.task, setting(cand, plan), seed=self.seed, weights=self.initial)
        if path.exists():
            run.load(path)
        cooldown = max(cand.batch, round(plan.cooldown * rung))
        if spent_in(study) + rung - run.samples + cooldown > allowance:
            trial.set_user_attr("stopped", "budget")
            study.tell(trial, state=TrialState.PRUNED)
            return {"stopped": "budget"}
        if self.progress is not None:
            self.progress(f"lr {cand.lr:.3g}, batch {cand.batch}: {rung:,} samples")
        before, seconds = run.cost.samples, run.cost.seconds
        run.advance(rung)
        value = run.score(cooldown)
        if k + 1 < len(plan.rungs):
            run.save(path)  # the last rung's runs are never continued: nothing to keep
        attrs = study._storage.get_trial(trial._trial_id).user_attrs
        trial.set_user_attr("samples", int(attrs.get("samples", 0)) + run.cost.samples - before)
        trial.set_user_attr("seconds", float(attrs.get("seconds", 0.0)) + run.cost.seconds - seconds)
        trial.report(value, rung)
        self._note_disk(study)
        self._drop_hopeless(study, plan, k)
        _die_if_told()
        return {"value": value}

    def _note_disk(self, study: optuna.Study) -> None:
        """The most bytes the search's saved runs have held at once (for tune.json)."""
        held = sum(p.stat().st_size for p in self.folder.glob("trial-*.pt") if p.is_file())
        if held > int(study.user_attrs.get("peak_disk", 0)):
            study.set_user_attr("peak_disk", held)

    def _drop_hopeless(self, study: optuna.Study, plan: SearchPlan, k: int) -> None:
        """Delete the saved runs that can no longer go on past rung ``k``: a run outside the best
        ``survivors(candidates, k + 1)`` scores so far never enters them (scores only add), so disk holds the
        live candidates only, whatever their number; the last rung keeps none."""
        rung, key = plan.rungs[k], sort_key(self.task.higher_is_better)
        keep = survivors(len(plan.candidates), k + 1) if k + 1 < len(plan.rungs) else 0
        scored = sorted((t for t in study.get_trials(deepcopy=False) if rung in t.intermediate_values),
                        key=lambda t: key(t.intermediate_values[rung]))
        for t in scored[keep:]:
            (self.folder / f"trial-{t.number}.pt").unlink(missing_ok=True)

    def _trial(self, study: optuna.Study, cand: Candidate, index: int) -> optuna.Trial:
        """The candidate's trial: made on its first rung — in one storage call, params and index together, so
        a worker killed half-way leaves nothing half-made — and found again on the next ones (or after a kill)."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("index") == index:
                return optuna.trial.Trial(study, t._trial_id)
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.RUNNING, params=_params(cand), distributions=_DISTRIBUTIONS,
            user_attrs={"index": index, "warmup_ratio": cand.warmup_ratio}))
        made = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.user_attrs.get("index") == index]
        return optuna.trial.Trial(study, made[-1]._trial_id)

    def _halve(self, study: optuna.Study, plan: SearchPlan, k: int) -> list[int]:
        """After rung ``k``: the candidates ``promote`` lets go on (their indexes, best first); the others are
        pruned and their saved runs deleted. Judged over every trial scored at the rung, so a halving cut short
        by a kill and done again decides the same."""
        rung, key = plan.rungs[k], sort_key(self.task.higher_is_better)
        scored = sorted((t for t in study.get_trials(deepcopy=False) if rung in t.intermediate_values),
                        key=lambda t: key(t.intermediate_values[rung]))
        going = {scored[i].number for i in promote([t.intermediate_values[rung] for t in scored],
                                                   higher_is_better=self.task.higher_is_better)}
        promoted = []
        for t in scored:
            if t.state != TrialState.RUNNING:
                continue
            trial = optuna.trial.Trial(study, t._trial_id)
            if t.number not in going and t.user_attrs.get(f"rung-{k}") != "promoted":
                study.tell(trial, state=TrialState.PRUNED)
                (self.folder / f"trial-{t.number}.pt").unlink(missing_ok=True)
                continue
            trial.set_user_attr(f"rung-{k}", "promoted")
            promoted.append(int(t.user_attrs["index"]))
        return promoted


_DISTRIBUTIONS = {"lr": optuna.distributions.FloatDistribution(1e-12, 1e6, log=True),
                  "micro_batch": optuna.distributions.IntDistribution(1, 1 << 30),
                  "accumulation": optuna.distributions.IntDistribution(1, 1 << 20)}


def setting(cand: Candidate, plan: SearchPlan) -> Setting:
    """What a candidate's run trains at: its warmup a share of the longest rung."""
    return Setting(cand.lr, cand.micro_batch, cand.accumulation, round(cand.warmup_ratio * plan.rungs[-1]))


def plan_note(plan: SearchPlan, allowance: int) -> dict[str, Any]:
    """The search plan as the first worker writes it for the others (JSON)."""
    return {"candidates": [[c.lr, c.micro_batch, c.accumulation, c.warmup_ratio] for c in plan.candidates],
            "rungs": list(plan.rungs), "cooldown": plan.cooldown, "allowance": allowance}


def _plan(note: dict[str, Any]) -> SearchPlan:
    cands = tuple(Candidate(float(lr), int(m), int(k), float(w)) for lr, m, k, w in note["candidates"])
    return SearchPlan(cands, tuple(int(r) for r in note["rungs"]), float(note["cooldown"]))


def best_candidate(study: optuna.Study, higher_is_better: bool) -> tuple[Candidate, float, int]:
    """The candidate with the best score at the longest rung any trial reached: (candidate, score, rung)."""
    scored = [t for t in study.trials if t.intermediate_values]
    if not scored:
        raise ValueError("no trial reached its first rung")
    top = max(max(t.intermediate_values) for t in scored)
    at_top = [t for t in scored if top in t.intermediate_values]
    key = sort_key(higher_is_better)
    best = min(at_top, key=lambda t: key(t.intermediate_values[top]))
    return _candidate(best), best.intermediate_values[top], top


def trial_records(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial, for tune.json: its setting, state, score per rung, samples trained and seconds."""
    return [{"lr": t.params.get("lr"), "batch": t.params.get("micro_batch", 0) * t.params.get("accumulation", 1),
             "state": t.state.name.lower(), "scores": {str(k): v for k, v in sorted(t.intermediate_values.items())},
             "samples": t.user_attrs.get("samples", 0), "seconds": round(float(t.user_attrs.get("seconds", 0.0)), 3),
             **({"stopped": "budget"} if "stopped" in t.user_attrs else {})}
            for t in study.trials]


def spent_in(study: optuna.Study) -> int:
    """Samples trained by every trial so far, those a kill cut short included."""
    return sum(int(t.user_attrs.get("samples", 0)) for t in study.trials)


def _params(cand: Candidate) -> dict[str, Any]:
    return {"lr": cand.lr, "micro_batch": cand.micro_batch, "accumulation": cand.accumulation}


def _candidate(trial: optuna.trial.FrozenTrial) -> Candidate:
    p = trial.params
    return Candidate(float(p["lr"]), int(p["micro_batch"]), int(p["accumulation"]),
                     float(trial.user_attrs.get("warmup_ratio", 0.0)))
