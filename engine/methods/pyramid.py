"""PyramidKV: a linearly decreasing per-layer budget schedule."""

from __future__ import annotations

import math

import torch

from .allocation import round_to_total
from ..arguments import Flag, Real
from .base import Method, ModelShape, Scoring, scoring_accepts


def pyramid_capacities(num_layers: int, prompt_len: int, kv_size: int, window: int, beta: float,
                       faithful: bool) -> torch.Tensor:
    """Selected tokens per layer (window excluded), int64 `[num_layers]`, for a prompt longer than `kv_size`.

    Published (METHODS.md 3.2): `B = kv_size - window`, `min = floor(B / beta)`, `max = 2B - min`; if
    `max >= n - w` then `max = n - w` and `min = 2B - max`; `cap_l = max - l * floor((max - min) / (L - 1))`.
    A prompt shorter than `2B` gets a uniform `B` (plain SnapKV), and so does a one-layer model.

    `faithful=True` uses the floored step, whose total exceeds the nominal `L * B` (4016 vs 3840 at
    C=128, w=8, L=32, beta=20). Otherwise the step is exact, `(max - min) / (L - 1)`, so the real schedule sums to
    `L * B` (its mean is `(max + min) / 2 = B`), and it is rounded to integers summing to exactly `L * B`.
    Either way every cap lies in `[0, n - w]`.
    """
    budget = kv_size - window
    if prompt_len < 2 * budget or num_layers == 1:
        return torch.full((num_layers,), budget, dtype=torch.int64)
    low = math.floor(budget / beta)
    high = 2 * budget - low
    if high >= prompt_len - window:
        high = prompt_len - window
        low = 2 * budget - high
    layers = torch.arange(num_layers, dtype=torch.float64)
    if faithful:
        return (high - layers * ((high - low) // (num_layers - 1))).to(torch.int64)
    schedule = high - layers * (high - low) / (num_layers - 1)
    return round_to_total(schedule, num_layers * budget, prompt_len - window)


class PyramidKV(Method):
    """PyramidKV (Cai et al., 2024): lower layers keep more tokens, upper layers fewer; same within a layer.

    Budgets: `pyramid_capacities` plus the window, shared by all KV heads of a layer; a prompt of at most
    `kv_size` tokens is kept whole. Scoring as SnapKV in KVCache-Factory (window sum, then max-pool). Defaults
    (METHODS.md 3.2, KVCache-Factory's runner): `window=8`, `pool="max"`, `pool_size=7`, `beta=20`,
    `group_reduce="mean"`. `beta` is a finite number >= 1 (`min = floor(B / beta)` must not exceed `B`), the others
    as `Scoring` accepts them; `kv_size >= window`. `faithful=True` reproduces the floored step (total above
    nominal); by default the total is exactly `kv_size * num_layers * num_kv_heads`.
    """

    name = "pyramidkv"
    description = "pyramid per-layer budgets, decreasing with depth (PyramidKV)"
    accepts = {**scoring_accepts("window", "pool", "pool_size", "group_reduce"), "beta": Real(1.0),
               "faithful": Flag()}

    def __init__(self, window: int = 8, pool: str = "max", pool_size: int = 7, beta: float = 20.0,
                 group_reduce: str = "mean", faithful: bool = False) -> None:
        self.beta = self.accept("beta", beta)
        self.faithful = self.accept("faithful", faithful)
        self.scoring = Scoring(window=window, window_reduce="sum", group_reduce=group_reduce, pool=pool,
                               pool_size=pool_size)

    def plan(self, shape: ModelShape, prompt_len: int, kv_size: int) -> torch.Tensor:
        if prompt_len <= kv_size:
            return torch.full((shape.num_layers, shape.num_kv_heads), prompt_len, dtype=torch.int64)
        caps = pyramid_capacities(shape.num_layers, prompt_len, kv_size, self.scoring.window, self.beta,
                                  self.faithful)
        return (caps + self.scoring.window)[:, None].expand(-1, shape.num_kv_heads).contiguous()
