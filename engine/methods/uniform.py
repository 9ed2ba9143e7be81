"""Methods that give every head the same budget: `full` (no compression) and `snapkv`."""

from __future__ import annotations

import torch

from .base import Method, ModelShape, Scoring


class Full(Method):
    """Keep every prompt token in every head."""

    name = "full"
    description = "no compression: every head keeps the whole prompt"

    def __init__(self, window: int = 8) -> None:
        self.scoring = Scoring(window=window)

    def plan(self, shape: ModelShape, prompt_len: int, kv_size: int) -> torch.Tensor:
        return torch.full((shape.num_layers, shape.num_kv_heads), prompt_len, dtype=torch.int64)


class SnapKV(Method):
    """SnapKV: every head keeps `kv_size` tokens (window included) chosen by observation-window attention."""

    name = "snapkv"
    description = "uniform budgets, tokens chosen by observation-window attention (SnapKV)"

    def __init__(self, window: int = 8, pool: str = "max", pool_size: int = 7, window_reduce: str = "sum",
                 group_reduce: str = "mean") -> None:
        self.scoring = Scoring(window=window, window_reduce=window_reduce, group_reduce=group_reduce, pool=pool,
                               pool_size=pool_size)

    def plan(self, shape: ModelShape, prompt_len: int, kv_size: int) -> torch.Tensor:
        budget = max(min(kv_size, prompt_len), min(self.scoring.window, prompt_len))
        return torch.full((shape.num_layers, shape.num_kv_heads), budget, dtype=torch.int64)
