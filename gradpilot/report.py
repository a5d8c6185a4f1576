"""Rendering: turns gradpilot's results into pictures. Analysis lives elsewhere; this module only draws."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradpilot.diagnose import Diagnosis
    from gradpilot.history import History
    from gradpilot.lr_finder import LRFinderResult


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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_lr_curve(result: LRFinderResult, path: Path) -> Path:
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
    import numpy as np

    from gradpilot._signal import centred_smooth

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    t = history.train_loss
    values = np.clip(t.values, -_DRAWABLE, _DRAWABLE)  # matplotlib cannot scale axes near the float limits
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
        lr_ax = ax.twinx()
        lr_ax.plot(history.lr.steps, history.lr.values, color="C2", lw=1, ls="--", label="learning rate")
        lr_ax.set_ylabel("learning rate")
    ax.set_title(f"learning rate {diagnosis.lr_verdict}: " + ", ".join(sorted(diagnosis.kinds)), fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    return _save(plt, fig, path)
