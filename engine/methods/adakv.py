"""Ada-SnapKV: budgets move between the KV heads of a layer according to their window scores."""

from __future__ import annotations

import math

import torch

from .allocation import round_to_total, settle, uniform_budgets
from ..arguments import Flag, Real
from .base import Method, ModelShape, Scoring, scoring_accepts


def head_shares(scores: torch.Tensor, total: int) -> torch.Tensor:
    """`c_h`: how many of the layer's top-`total` scores (flattened over heads) each head holds; int64 `[H]`.

    Ties go to the lower head, then the lower position. `sum(c_h) == total` exactly.
    """
    num_heads, candidates = scores.shape
    order = torch.sort(scores.flatten(), descending=True, stable=True).indices[:total]
    return torch.bincount(order // candidates, minlength=num_heads)


def ada_capacities(shares: torch.Tensor, total: int, alpha: float, candidates: int, faithful: bool) -> torch.Tensor:
    """Selected tokens per head (window excluded), int64 `[H]`, from the shares `c_h` of `head_shares`.

    Published (METHODS.md 2): `cap_h = round(c_h * (1 - alpha) + floor(alpha * B))` with `B = total // H` and
    round-half-to-even, whose sum misses `H * B` by up to `H / 2` (more when `alpha * B` is not an integer).
    `faithful=False`: `cap_h = c_h * (1 - alpha) + alpha * total / H` (sums to `total` exactly), rounded by
    largest remainder so the sum stays exactly `total`. Both stay within `[0, candidates]` (the prefix tokens a
    head can select) because `c_h` and `total / H` do.
    """
    shares = shares.to(torch.float64)
    num_heads = shares.numel()
    if faithful:
        return torch.round(shares * (1 - alpha) + math.floor(alpha * (total // num_heads))).to(torch.int64)
    return round_to_total(shares * (1 - alpha) + alpha * total / num_heads, total, candidates)


class AdaSnapKV(Method):
    """Ada-SnapKV (Feng et al., 2024) over KV heads (AdaKV's `gqa_support` mode).

    `plan` gives every KV head `kv_size` (window included), like SnapKV. `adapt` then moves budget between the
    heads of a layer: the layer's `H * B` selected tokens (`B = kv_size - window`) are the top `H * B` of all its
    heads' group-reduced (mean), pooled scores flattened together; head `h` holding `c_h` of them gets
    `c_h * (1 - alpha) + alpha * B` (`alpha` = the floor, a uniform part), rounded so the layer total is exactly
    unchanged. Defaults are those of the HeadKV paper's comparison (HeadKV's and KVCache-Factory's runners,
    METHODS.md 1(e), 3.5): `window=8`, `pool="max"`, `pool_size=7`, `window_reduce="mean"`, `group_reduce="mean"`,
    `alpha=0.2`, so every method here scores with the same window. AdaKV's own code defaults to `window=32`.
    `alpha` is a finite number in [0, 1], the others as `Scoring` accepts them; `kv_size >= window`.

    `faithful=True` uses the published `floor(alpha * B)` and round-half-to-even (`ada_capacities`); because the
    engine allocates each layer's total before `adapt`, the published rounding error (at most `H / 2`) is then
    settled +/-1 on the heads with the largest rounding residual, so the layer total still matches `plan`.
    """

    name = "ada-snapkv"
    description = "per-layer budget moved between KV heads by their window scores (Ada-SnapKV, GQA mode)"
    accepts = {**scoring_accepts("window", "pool", "pool_size", "window_reduce", "group_reduce"),
               "alpha": Real(0.0, 1.0), "faithful": Flag()}

    def __init__(self, window: int = 8, pool: str = "max", pool_size: int = 7, window_reduce: str = "mean",
                 group_reduce: str = "mean", alpha: float = 0.2, faithful: bool = False) -> None:
        self.alpha = self.accept("alpha", alpha)
        self.faithful = self.accept("faithful", faithful)
        self.scoring = Scoring(window=window, window_reduce=window_reduce, group_reduce=group_reduce, pool=pool,
                               pool_size=pool_size)

    def plan(self, shape: ModelShape, prompt_len: int, kv_size: int) -> torch.Tensor:
        return uniform_budgets(shape, prompt_len, kv_size)

    def adapt(self, layer: int, budgets: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        num_heads, candidates = scores.shape
        window = self.scoring.window
        total = int(budgets.sum().item()) - num_heads * window
        if candidates <= 0 or total >= num_heads * candidates:
            return budgets
        shares = head_shares(scores.detach(), total).cpu()
        caps = ada_capacities(shares, total, self.alpha, candidates, self.faithful)
        if self.faithful:
            residual = shares.to(torch.float64) * (1 - self.alpha) + math.floor(self.alpha * (total // num_heads))
            caps = settle(caps, total, 0, candidates, residual - caps)
        return (caps + window).to(budgets.device)
