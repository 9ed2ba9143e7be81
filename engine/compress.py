"""Prefill compression of one sequence: score each layer's prompt tokens, let the method adapt, pack the cache."""

from __future__ import annotations

import torch

from .backend import Backend
from .cache import RaggedKVCache
from .methods import Method, ModelShape, Scoring


def prefix_scores(
    backend: Backend,
    scoring: Scoring,
    query: torch.Tensor,
    key: torch.Tensor,
    window: int,
    sm_scale: float,
    qo_head_weights: torch.Tensor | None,
) -> torch.Tensor:
    """Scores of the `n - window` prefix tokens of one layer, as `scoring` defines them.

    Args:
        query: `[num_qo_heads, n, head_dim]`, key: `[num_kv_heads, n, head_dim]`, both after RoPE.
        window: observation-window size, `1 <= window <= n`.
        qo_head_weights: optional fp32 `[num_qo_heads]`.

    Returns:
        fp32 `[num_kv_heads, n - window]` on the keys' device: window-attention scores (``"window"``), or positions
        with the first `sinks` tokens at +inf (``"recency"``); summed over KV heads and shared by all of them when
        `scoring.share_across_heads`.
    """
    num_kv_heads, n, _ = key.shape
    if scoring.kind == "recency":
        positions = torch.arange(n - window, device=key.device, dtype=torch.float32)
        scores = positions.masked_fill(positions < scoring.sinks, float("inf")).expand(num_kv_heads, -1)
    else:
        scores = backend.window_scores(
            query[:, n - window :].contiguous(),
            key,
            window_reduce=scoring.window_reduce,
            group_reduce=scoring.group_reduce,
            pool=scoring.pool,
            pool_size=scoring.pool_size,
            qo_head_weights=qo_head_weights,
            sm_scale=sm_scale,
        )
    if scoring.share_across_heads:
        scores = scores.sum(dim=0, keepdim=True).expand(num_kv_heads, -1)
    return scores.to(torch.float32).contiguous()


def plan_budgets(method: Method, shape: ModelShape, prompt_len: int, kv_size: int | None) -> torch.Tensor:
    """int64 `[num_layers, num_kv_heads]` host budgets of one prompt under `method`, checked against its contract.

    `kv_size` was checked against the method (`checks.check_kv_size`). None or a `kv_size >= prompt_len` keeps the
    whole prompt in every head. `method.check_shape` runs first, so a method that cannot plan for this model is
    refused whatever the prompt's length.

    Raises:
        ValueError: the method does not fit the model (e.g. a score file's shape), or `method.plan` returned the
            wrong shape or a budget outside [window, prompt_len].
    """
    method.check_shape(shape)
    full_shape = (shape.num_layers, shape.num_kv_heads)
    if kv_size is None or kv_size >= prompt_len:
        return torch.full(full_shape, prompt_len, dtype=torch.int64)
    budgets = method.plan(shape, prompt_len, kv_size)
    low = min(method.scoring.window, prompt_len)
    if tuple(budgets.shape) != full_shape or int(budgets.min()) < low or int(budgets.max()) > prompt_len:
        raise ValueError(
            f"{type(method).__name__}.plan returned budgets of shape {tuple(budgets.shape)} in "
            f"[{int(budgets.min())}, {int(budgets.max())}]; expected shape {full_shape} in [{low}, {prompt_len}]"
        )
    return budgets.to(torch.int64).cpu()


class SequenceCompressor:
    """The prefill hook for one sequence: after a layer's full attention, keep each KV head's budget of tokens.

    Args:
        method: the budget policy.
        budgets: int64 `[num_layers, num_kv_heads]` host tensor from `method.plan` (or the whole prompt everywhere
            when nothing is compressed).
        cache: the batch's ragged cache; seq: this sequence's index in it.
    """

    def __init__(self, method: Method, budgets: torch.Tensor, cache: RaggedKVCache, seq: int) -> None:
        self.method, self.budgets, self.cache, self.seq = method, budgets, cache, seq
        self.kept = budgets.clone()  # after `adapt`: the tokens each head really keeps

    def __call__(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sm_scale: float
    ) -> None:
        """Compress one layer (query `[1, Hq, n, D]`, key/value `[1, Hkv, n, D]`, post-RoPE) into the cache."""
        k_src, v_src = key[0].contiguous(), value[0].contiguous()
        n = k_src.shape[1]
        window = min(self.method.scoring.window, n)
        planned = self.budgets[layer]
        if bool((planned >= n).all()):  # every head keeps the whole prompt: nothing to score
            scores = torch.zeros(k_src.shape[0], n - window, device=k_src.device)
            budgets = planned
        else:
            weights = self.method.qo_head_weights(layer)
            if weights is not None:
                weights = weights.to(device=k_src.device, dtype=torch.float32)
            scores = prefix_scores(self.cache.backend, self.method.scoring, query[0], k_src, window, sm_scale, weights)
            budgets = self._checked(layer, self.method.adapt(layer, planned, scores).cpu(), planned, n, window)
        self.kept[layer] = budgets
        self.cache.pack(layer, self.seq, budgets, scores, k_src, v_src)

    def _checked(self, layer: int, budgets: torch.Tensor, planned: torch.Tensor, n: int, window: int) -> torch.Tensor:
        name = type(self.method).__name__
        if budgets.shape != planned.shape or int(budgets.sum()) != int(planned.sum()):
            raise ValueError(
                f"{name}.adapt changed layer {layer}'s budgets from {planned.tolist()} to {budgets.tolist()}: the "
                "shape and the sum must stay the same"
            )
        if int(budgets.min()) < window or int(budgets.max()) > n:
            raise ValueError(
                f"{name}.adapt gave layer {layer} budgets {budgets.tolist()} outside [{window}, {n}] (window, prompt)"
            )
        return budgets.to(torch.int64)
