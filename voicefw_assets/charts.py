"""Small PNG charts embedded in asset metadata (markdown images): what people would rather look at
than read -- PR curves and score distributions of the candidates, flagged calls per range over a day."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve


def _figure(ncols: int = 1, width: float = 5.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 3.6), dpi=80, squeeze=False)
    return plt, fig, axes[0]


def _markdown(plt, fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def pr_curves(targets: dict[str, tuple[np.ndarray, np.ndarray]], scores: dict[str, np.ndarray]) -> str:
    """PR curves of every candidate, one panel per target: {target: (y, row mask)}."""
    plt, fig, axes = _figure(len(targets))
    for ax, (target, (y, mask)) in zip(axes, targets.items()):
        for name, s in scores.items():
            p, r, _ = precision_recall_curve(y, s[mask])
            ax.plot(r, p, label=f"{name} (AP {average_precision_score(y, s[mask]):.3f})")
        ax.set(xlabel="recall", ylabel="precision", title=f"evaluation days vs {target}")
        ax.legend(loc="lower left", fontsize=8)
    return _markdown(plt, fig, "PR curves")


def score_distribution(scores: np.ndarray, groups: dict[str, np.ndarray], thresholds: dict, title: str) -> str:
    """Histogram of scores per group (e.g. flash / not flash by label), with the decision thresholds."""
    plt, fig, (ax,) = _figure(width=6)
    bins = np.linspace(0, 1, 41)
    for name, mask in groups.items():
        if mask.any():
            ax.hist(scores[mask], bins=bins, alpha=0.55, label=f"{name} ({int(mask.sum()):,})", log=True)
    for name, t in thresholds.items():
        ax.axvline(t, color="black", linestyle="--" if name == "flag" else "-", linewidth=1)
        ax.text(t, ax.get_ylim()[1], f" {name} {t:.2f}", va="top", fontsize=8)
    ax.set(xlabel="score", ylabel="calls (log)", title=title)
    ax.legend(fontsize=8)
    return _markdown(plt, fig, "score distribution")


def flagged_over_day(df: pd.DataFrame, title: str) -> str:
    """Flagged calls per 15 minutes for each range: columns bucket (timestamp), a_range, flagged."""
    plt, fig, (ax,) = _figure(width=8)
    for rng, g in df.groupby("a_range", sort=False):
        ax.step(g["bucket"], g["flagged"], where="post", label=rng)
    ax.set(xlabel="time (UTC)", ylabel="flagged calls / 15 min", title=title)
    ax.legend(fontsize=7, ncol=2)
    fig.autofmt_xdate()
    return _markdown(plt, fig, "flagged calls per range")
