"""Fidelity against KV budget: mean answer log-probability per method with clustered standard errors as error bars,
the full cache as a dashed reference line."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from .budget_plot import MARKERS
from .fidelity_stats import clustered_mean
from .report import group


def plot_fidelity(records: Sequence[dict], path: str | Path, title: str, metric: str = "answer_logprob") -> Path:
    """Write a PNG: x = kv_size (log2 axis), y = mean `metric` with +-1 clustered SE bars, one line per method;
    `full` (kv_size None) is a horizontal dashed line with its SE band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        raise ValueError("no records to plot")
    budgets = sorted({r["kv_size"] for r in records if r["kv_size"] is not None})
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    drawn = 0
    for (method,), items in group(records, ("method",)).items():
        cells = group(items, ("kv_size",))
        if set(cells) == {(None,)}:
            mean, se = clustered_mean([r[metric] for r in items], [r["fact"] for r in items])
            ax.axhline(mean, color="black", linestyle="--", label=method)
            ax.axhspan(mean - se, mean + se, color="black", alpha=0.08)
            continue
        xs = [b for b in budgets if (b,) in cells]
        stats = [clustered_mean([r[metric] for r in cells[(b,)]], [r["fact"] for r in cells[(b,)]]) for b in xs]
        # a small horizontal offset per method keeps overlapping error bars apart
        shifted = [x * 2 ** (0.03 * (drawn - 3)) for x in xs]
        ax.errorbar(shifted, [m for m, _ in stats], yerr=[s for _, s in stats], marker=MARKERS[drawn % len(MARKERS)],
                    capsize=3, markersize=5, label=method)
        drawn += 1
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("kv_size (tokens kept per KV head, window included)")
    ax.set_ylabel("answer log-prob (nats), mean ± clustered SE" if metric == "answer_logprob" else metric)
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
