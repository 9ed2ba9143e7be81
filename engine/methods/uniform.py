"""Methods that give every head the same budget: `full` (no compression) and `snapkv`."""

from __future__ import annotations

import torch

from .allocation import uniform_budgets
from .base import Method, ModelShape, Scoring, scoring_accepts


class Full(Method):
    """Keep every prompt token in every head; any `kv_size` (an int >= 1, or None) is accepted and ignored.

    Parameters: `window=8`, an int >= 1 (only sets the scoring the engine would use; nothing is scored or dropped).
    """

    name = "full"
    description = "no compression: every head keeps the whole prompt"
    accepts = scoring_accepts("window")

    def __init__(self, window: int = 8) -> None:
        self.scoring = Scoring(window=window)

    @property
    def min_kv_size(self) -> int:
        """1: nothing is dropped, so any positive `kv_size` works."""
        return 1

    def plan(self, shape: ModelShape, prompt_len: int, kv_size: int) -> torch.Tensor:
        return torch.full((shape.num_layers, shape.num_kv_heads), prompt_len, dtype=torch.int64)


class SnapKV(Method):
    """SnapKV (Li et al., 2024): every KV head keeps `kv_size` tokens, window included.

    Tokens are ranked by the attention of the last `window` prompt queries, summed over the window, reduced over
    the query heads of each GQA group (KVCache-Factory's `kv_head` mode), then max-pooled. Defaults are
    KVCache-Factory's LongBench runner (METHODS.md 3.1): `window=8`, `pool="max"`, `pool_size=7`,
    `window_reduce="sum"`, `group_reduce="mean"`. A prompt of at most `kv_size` tokens is kept whole, as published.
    Accepted values: `accepts` (`Scoring`'s); `kv_size >= window`.
    """

    name = "snapkv"
    description = "uniform budgets, tokens chosen by observation-window attention (SnapKV)"
    accepts = scoring_accepts("window", "pool", "pool_size", "window_reduce", "group_reduce")

    def __init__(self, window: int = 8, pool: str = "max", pool_size: int = 7, window_reduce: str = "sum",
                 group_reduce: str = "mean") -> None:
        self.scoring = Scoring(window=window, window_reduce=window_reduce, group_reduce=group_reduce, pool=pool,
                               pool_size=pool_size)

    def plan(self, shape: ModelShape, prompt_len: int, kv_size: int) -> torch.Tensor:
        return uniform_budgets(shape, prompt_len, kv_size)
