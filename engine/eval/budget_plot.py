"""Accuracy against KV budget: one line per method, the full cache as a dashed reference."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .report import group, mean

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_accuracy_vs_budget(records: Sequence[dict], path: str | Path, title: str, value: str = "correct") -> Path:
    """Write a PNG: x = kv_size (log2 axis, with the mean % of the KV cache kept under each tick), y = mean of
    `value` in %, one line per compressing method; `full` (kv_size None) is a horizontal dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        raise ValueError("no records to plot")
    budgets = sorted({r["kv_size"] for r in records if r["kv_size"] is not None})
    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn = 0
    for (method,), items in group(records, ("method",)).items():
        cells = group(items, ("kv_size",))
        if method == "full" or set(cells) == {(None,)}:
            ax.axhline(100 * mean(float(r[value]) for r in items), color="black", linestyle="--", label=method)
            continue
        xs = [b for b in budgets if (b,) in cells]
        ys = [100 * mean(float(r[value]) for r in cells[(b,)]) for b in xs]
        # shrinking markers of different shapes keep methods with equal values visible on top of each other
        ax.plot(xs, ys, marker=MARKERS[drawn % len(MARKERS)], markersize=max(3.0, 9.0 - drawn), label=method)
        drawn += 1
    kept = group([r for r in records if r["kv_size"] is not None], ("kv_size",))
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [f"{b}\n{100 * mean(r['kept_fraction'] for r in kept[(b,)]):.1f}%" for b in budgets])
    ax.set_xlabel("kv_size (tokens per head; below: mean share of the KV cache kept)")
    ax.set_ylabel("accuracy (%)" if value == "correct" else value)
    ax.set_ylim(-3, 103)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the lines crowd the bottom
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
