"""Drawings: turns gradpilot's results into matplotlib images. Analysis lives elsewhere; this module only draws."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gradpilot._files import write_atomic

if TYPE_CHECKING:
    from gradpilot.diagnosis.findings import Diagnosis
    from gradpilot.diagnosis.history import History


class RangeCurve(Protocol):
    """What a range-test curve is drawn from (``lr.LRFinderResult`` has it): the sweep, every rule's pick, the
    chosen rule, the interval and its confidence, and the suggestion."""

    @property
    def lrs(self) -> Sequence[float]: ...
    @property
    def losses(self) -> Sequence[float]: ...
    @property
    def smoothed_losses(self) -> Sequence[float]: ...
    @property
    def alternatives(self) -> Mapping[str, float]: ...
    @property
    def rule(self) -> str: ...
    @property
    def interval(self) -> tuple[float, float]: ...
    @property
    def confidence(self) -> float: ...
    @property
    def suggestion(self) -> float: ...


_DRAWABLE = 1e100  # values beyond are drawn at this bound


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a core dependency
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from None
    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """Write the figure (margins set by hand: matplotlib's tight layout draws each figure twice)."""
    fig.subplots_adjust(left=0.1, right=0.97, top=0.9, bottom=0.13, hspace=0.12, wspace=0.28)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".").lower() or "png"
    try:
        write_atomic(path, lambda f: fig.savefig(f, dpi=110, format=fmt))
    finally:
        plt.close(fig)
    return path


def plot_lr_curve(result: RangeCurve, path: Path) -> Path:
    """Save the range-test curve (raw and smoothed loss over log-LR) with each rule's pick marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    n = len(result.smoothed_losses)
    ax.plot(result.lrs[:n], result.losses[:n], color="0.75", lw=0.8, label="loss")
    ax.plot(result.lrs[:n], result.smoothed_losses, color="C0", lw=1.8, label="smoothed loss")
    for i, (name, lr) in enumerate(sorted(result.alternatives.items())):
        chosen = name == result.rule
        ax.axvline(lr, color="C3" if chosen else f"C{i + 1}", lw=2 if chosen else 1,
                   ls="-" if chosen else "--", label=f"{name}: {lr:.2g}" + (" (suggested)" if chosen else ""))
    ax.axvspan(*result.interval, color="C2", alpha=0.12, label=f"interval (confidence {result.confidence:.2f})")
    ax.set_xscale("log")
    lo, hi = min(result.smoothed_losses), result.smoothed_losses[0]
    pad = 0.15 * max(hi - lo, abs(lo) * 0.05, 1e-8)
    ax.set_ylim(lo - pad, max(result.smoothed_losses[: max(n // 2, 1)]) + 3 * pad)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test — suggestion {result.suggestion:.3g}")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_schedule(lrs: list[float], path: Path, title: str) -> Path:
    """Save an LR schedule (LR against optimizer step) as an image."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(range(len(lrs)), lrs, color="C0", lw=1.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def plot_diagnosis(history: History, diagnosis: Diagnosis, path: Path) -> Path:
    """Save the run's curves (train and validation loss, LR) with each finding's span shaded and named."""
    from gradpilot.diagnosis.signal import centred_smooth

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    t = history.train_loss
    values = np.clip(t.values, -_DRAWABLE, _DRAWABLE)  # matplotlib cannot scale axes near the float limits
    if len(t):  # a log of validation loss alone has none
        ax.plot(t.steps, values, color="0.75", lw=0.7, label="train loss")
    finite = np.isfinite(values)
    if finite.sum() > 8:
        ax.plot(t.steps[finite], centred_smooth(values[finite], max(2.0, finite.sum() / 40)), color="C0", lw=1.8,
                label="train loss (trend)")
    if history.val_loss is not None:
        ax.plot(history.val_loss.steps, np.clip(history.val_loss.values, -_DRAWABLE, _DRAWABLE), "o-", color="C1",
                lw=1.5, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if finite.any():
        with np.errstate(all="ignore"):  # losses near the float limits: keep matplotlib's own limits
            lo, hi = np.nanpercentile(values[finite], [1, 99])
            bottom, top = lo - 0.1 * (hi - lo), hi + 0.3 * (hi - lo)
        if np.isfinite([bottom, top]).all() and bottom < top:
            ax.set_ylim(bottom, top)
    colours = {"divergence": "C3", "nan": "C3", "oscillation": "C4", "plateau": "C7", "slow_convergence": "C8",
               "overfitting": "C1", "underfitting": "C9", "healthy": "C2"}
    for i, f in enumerate(diagnosis.findings):
        ax.axvspan(f.start, max(f.end, f.start + 1e-9), color=colours.get(f.kind, "C5"), alpha=0.12)
        ax.annotate(f.kind, xy=(f.start, 1.0 - 0.06 * i), xycoords=("data", "axes fraction"), fontsize=8,
                    color=colours.get(f.kind, "C5"), va="top")
    if history.lr is not None:
        _lr_axis(ax, history.lr.steps, history.lr.values)
    ax.set_title(f"learning rate {diagnosis.lr_verdict}: " + ", ".join(sorted(diagnosis.kinds)), fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    return _save(plt, fig, path)


def _lr_axis(ax: Any, steps: Any, lrs: Any) -> None:
    """The LR on a second axis from 0, so that a constant LR is a flat line at its height, not noise blown up
    to fill the axis."""
    lr_ax = ax.twinx()
    lr_ax.plot(steps, lrs, color="C2", lw=1, ls="--", label="learning rate")
    finite = np.asarray(lrs, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size and finite.max() > 0:
        lr_ax.set_ylim(0, 1.15 * float(finite.max()))
    lr_ax.set_ylabel("learning rate")


# --- the tune report's figures: each takes plain numbers from tune.json --------------------------------


def plot_range_test(evidence: dict[str, Any], picks: dict[str, float], chosen: float,
                    interval: tuple[float, float], candidates: list[float], path: Path,
                    searched: float | None = None) -> Path:
    """The range test as tune ran it: raw and smoothed loss over log-LR, each rule's pick that lies within the
    sweep, the interval the curve supports, the LRs the search then tried (on the curve, at the task's batch)
    and the one it chose (``searched``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    smoothed = evidence["smoothed_losses"]
    lrs = evidence["lrs"][: len(smoothed)]
    raw = [v for v in evidence.get("losses", [])[: len(lrs)] if np.isfinite(v)]
    if raw:
        ax.plot(lrs[: len(raw)], raw, color="0.75", lw=0.8, label="loss")
    ax.plot(lrs, smoothed, color="C0", lw=1.8, label="smoothed loss")

    def inside(lr: float) -> bool:  # a pick off the sweep says nothing drawn on it
        return bool(lrs[0] <= lr <= lrs[-1])

    for i, (rule, lr) in enumerate(sorted(picks.items())):
        if inside(lr):
            ax.axvline(lr, color=f"C{i + 1}", lw=1, ls="--", label=f"{rule}: {lr:.2g}")
    ax.axvline(chosen, color="C3", lw=2, label=f"suggestion: {chosen:.2g}")
    ax.axvspan(*interval, color="C2", alpha=0.12, label=f"interval: {interval[0]:.2g} to {interval[1]:.2g}")
    tried = [lr for lr in candidates if inside(lr)]
    if tried:
        ax.plot(tried, np.interp(np.log(tried), np.log(lrs), smoothed), marker="v", color="C2", ms=8, ls="none",
                label="search candidates")
    if searched is not None:
        ax.axvline(searched, color="k", lw=2.5, label=f"chosen by the search: {searched:.2g}")
    ax.set_xscale("log")
    ax.set_ylim(*_loss_window(smoothed, raw))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _loss_window(smoothed: list[float], raw: list[float]) -> tuple[float, float]:
    """Loss axis limits that hold the whole descent (raw points included) and the start of the climb, without
    letting a divergence to huge values flatten the rest."""
    first = max(smoothed[: max(len(smoothed) // 2, 1)])
    values = np.asarray([*smoothed, *raw], dtype=float)
    lo = float(np.min(values))
    hi = float(min(np.max(values), first + 2 * (first - lo)))  # the climb, up to twice the descent above the start
    pad = 0.08 * max(hi - lo, abs(lo) * 0.05, 1e-8)
    return lo - pad, hi + pad


def plot_batch_trials(trials: list[dict[str, Any]], path: Path) -> Path:
    """Each micro-batch tried: throughput (bars) and peak memory (line); a size that did not fit is marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    labels = [str(t["batch_size"]) for t in trials]
    speeds = [t["samples_per_second"] or 0.0 for t in trials]
    ax.bar(labels, speeds, color=["C0" if t["fits"] else "C3" for t in trials])
    for i, t in enumerate(trials):
        if not t["fits"]:
            ax.annotate("out of memory", (i, 0), ha="center", va="bottom", color="C3", fontsize=8)
    ax.set_xlabel("micro-batch size")
    ax.set_ylabel("samples / s")
    _memory_line(ax, labels, [t["peak_memory"] for t in trials])
    return _save(plt, fig, path)


def _memory_line(ax: Any, labels: list[str], memory: list[int | None]) -> None:
    """Peak memory on a second axis, where any trial measured it."""
    if any(m is not None for m in memory):
        twin = ax.twinx()
        twin.plot(labels, [(m or 0) / 2**20 for m in memory], "o-", color="C1")
        twin.set_ylabel("peak memory (MiB)", color="C1")


def plot_ladder(trials: list[dict[str, Any]], winner: tuple[float, int], path: Path) -> Path:
    """Successive halving: each candidate's score at each rung it reached, the rungs evenly spaced and labelled
    with their length; a candidate pruned at a rung ends there in a cross of its own colour."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    rungs = sorted({int(k) for t in trials for k in t["scores"]})
    for i, t in enumerate(sorted(trials, key=lambda t: t["lr"] or 0.0)):
        if t["scores"]:
            _ladder_line(ax, t, rungs, f"C{i % 10}", best=(t["lr"], t["batch"]) == winner)
    ax.set_xticks(range(len(rungs)), [f"{r:,}" for r in rungs])
    ax.set_xlim(-0.3, max(len(rungs) - 0.7, 0.3))
    ax.set_xlabel("rung: items trained before the score")
    ax.set_ylabel("validation metric after cooldown")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _ladder_line(ax: Any, trial: dict[str, Any], rungs: list[int], colour: str, *, best: bool) -> None:
    xs, ys = zip(*sorted((rungs.index(int(k)), v) for k, v in trial["scores"].items()), strict=True)
    pruned = trial["state"] == "pruned"
    mark = " (chosen)" if best else " (pruned)" if pruned else ""
    ax.plot(xs, ys, "-", color=colour, lw=2.5 if best else 1.2,
            label=f"lr {trial['lr']:.2g}, batch {trial['batch']}{mark}")
    kept = len(xs) - 1 if pruned else len(xs)
    ax.plot(xs[:kept], ys[:kept], "o", color=colour)
    if pruned:
        ax.plot([xs[-1]], [ys[-1]], marker="x", color=colour, ms=10, mew=2.5)


def plot_trunk(trunk_lrs: list[float], branches: list[dict[str, Any]], winner: int, path: Path) -> Path:
    """The trunk and its branches: the trunk's LR per optimizer step, each branch's decay drawn off it (the
    winner bold), and each branch's validation score at the step it ended."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.2), sharex=True, height_ratios=(3, 2))
    top.plot(range(len(trunk_lrs)), trunk_lrs, color="0.35", lw=1.6, label="trunk (constant LR after warmup)")
    for i, b in enumerate(branches):
        _branch(top, bottom, b, trunk_lrs, "C3" if i == winner else f"C{i % 9}", won=i == winner)
    top.set_ylabel("learning rate")
    top.set_ylim(bottom=0)
    top.legend(fontsize=8)
    bottom.set_xlabel("optimizer step")
    bottom.set_ylabel("validation metric")
    return _save(plt, fig, path)


def _branch(top: Any, bottom: Any, b: dict[str, Any], trunk_lrs: list[float], colour: str, *, won: bool) -> None:
    """One branch: its decay off the trunk's LR (above), its score where it ended (below; none if not finite)."""
    s = b["schedule"]
    peak = trunk_lrs[b["start"] - 1] if 0 < b["start"] <= len(trunk_lrs) else (trunk_lrs[-1] if trunk_lrs else 1.0)
    steps = np.arange(b["start"], b["steps"] + 1)
    top.plot(steps, peak * _decay(steps - b["start"], s["decay"], s["decay_type"]), color=colour,
             lw=2.6 if won else 1.2, ls="-" if won else "--",
             label=f"branch to {b['epochs']} epochs" + (" (chosen)" if won else ""))
    if b["score"] is not None and np.isfinite(b["score"]):
        bottom.plot([b["steps"]], [b["score"]], marker="*" if won else "o", ms=14 if won else 8, color=colour)
        bottom.annotate(f"{b['score']:.4g}", (b["steps"], b["score"]), textcoords="offset points", xytext=(6, 4),
                        fontsize=8)


def _decay(offset: Any, steps: int, kind: str) -> Any:
    """A branch's LR factor ``offset`` steps into a decay of ``steps`` (lr_factor's formulas, on arrays)."""
    progress = np.clip(offset / max(1, steps), 0, 1)
    if kind == "linear":
        return 1 - progress
    return 0.5 * (1 + np.cos(np.pi * progress)) if kind == "cosine" else 1 - np.sqrt(progress)
