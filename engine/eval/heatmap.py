"""Accuracy heatmaps in the style of the HeadKV paper's Figure 5: needle depth against prompt length."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .report import group, mean


def plot_heatmaps(records: Sequence[dict], method: str, path: str | Path, value: str = "correct") -> Path:
    """Write one PNG for `method`: a panel per kv_size, prompt length on x, depth on y, cell = mean of `value`
    over the cell's needles (0 red to 1 green). Returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    mine = [record for record in records if record["method"] == method]
    if not mine:
        raise ValueError(f"method={method!r} has no records to plot")
    lengths = sorted({record["length"] for record in mine})
    depths = sorted({record["depth"] for record in mine})
    panels = group(sorted(mine, key=lambda r: (r["kv_size"] is not None, r["kv_size"] or 0)), ("kv_size",))
    cmap = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])
    fig, axes = plt.subplots(
        1, len(panels), figsize=(1.6 + max(2.0, 0.5 * len(lengths)) * len(panels), 1.2 + 0.35 * len(depths)),
        squeeze=False, layout="constrained",
    )
    for ax, ((kv_size,), items) in zip(axes[0], panels.items()):
        cells = group(items, ("depth", "length"))
        grid = [[mean(float(r[value]) for r in cells.get((d, n), [])) for n in lengths] for d in depths]
        image = ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(lengths)), [f"{n / 1000:g}K" if n >= 1000 else str(n) for n in lengths], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
        budget = "full cache" if kv_size is None else f"kv_size {kv_size}"
        ax.set_title(f"{budget}: {100 * mean(float(r[value]) for r in items):.0f}%", fontsize=9)
    axes[0][0].set_ylabel("needle depth (%)")
    fig.suptitle(method, fontsize=10)
    fig.supxlabel("prompt length (tokens)", fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), label="accuracy" if value == "correct" else value, fraction=0.05)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
