"""A layers x heads heatmap of mean head scores (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch


def save_heatmap(table: torch.Tensor, path: Path, title: str) -> None:
    """Save `table` (`[layers, heads]` mean scores; layer 0 at the top) as a PNG at `path`."""
    layers, heads = table.shape
    figure, axes = plt.subplots(figsize=(2.0 + 0.45 * heads, 1.6 + 0.22 * layers), dpi=110)
    image = axes.imshow(table.float().numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    axes.set_xlabel("query head")
    axes.set_ylabel("layer")
    axes.set_xticks(range(heads))
    axes.set_yticks(range(0, layers, max(1, layers // 15)))
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, label="mean score")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
