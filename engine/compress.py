"""Prefill compression of one sequence: score each layer's prompt tokens, let the method adapt, pack the cache.

The question-aware window. A prompt built with a chat template ends with the template's assistant header (the
end-of-turn tokens after the user's text plus the tokens `add_generation_prompt=True` adds, `h` of them:
`chat_header.header_length`). Scoring with the last `w` prompt tokens would then score with template tokens that never
see the question. With `header = h > 0` the `w` queries just before the header (the end of the user's text) score
the keys before the header, and every head keeps the header and those `w` queries as its tail of `w + h` tokens:
the header tokens are not prompt tokens to select. `kv_size` counts every kept token, header included, so every
method still keeps exactly `kv_size * num_layers * num_kv_heads` tokens (equal memory across methods and settings);
a method plans and adapts as if its window were `w + h` (`with_header`), and the least `kv_size` it accepts grows
by `h`. `header = 0` is the plain window: the last `w` tokens score, exactly as without this feature.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from .backend import Backend
from .cache import RaggedKVCache
from .methods import Method, ModelShape, Scoring


def with_header(method: Method, header: int) -> Method:
    """`method` as it plans and adapts for a prompt ending with a `header`-token assistant header: a shallow copy
    whose `scoring.window` is `window + header` (the tail every head keeps), or `method` itself when `header` is 0.

    Only the budgets see the longer window; scoring still uses `method.scoring` (`SequenceCompressor`). The copy's
    `min_kv_size` is the method's plus `header` (its window grew), which is what `checks.check_kv_size` asks for.
    """
    if header == 0:
        return method
    view = copy.copy(method)
    view.scoring = dataclasses.replace(method.scoring, window=method.scoring.window + header)
    return view


def prefix_scores(
    backend: Backend,
    scoring: Scoring,
    query: torch.Tensor,
    key: torch.Tensor,
    window: int,
    sm_scale: float,
    qo_head_weights: torch.Tensor | None,
    header: int = 0,
) -> torch.Tensor:
    """Scores of the `n - header - window` prefix tokens of one layer, as `scoring` defines them.

    The `window` queries are those just before the last `header` tokens, and the keys they score are the prompt's
    first `n - header - window`: with `header = 0`, the last `window` queries score every earlier token.

    Args:
        query: `[num_qo_heads, n, head_dim]`, key: `[num_kv_heads, n, head_dim]`, both after RoPE.
        window: observation-window size, `1 <= window <= n - header`.
        qo_head_weights: optional fp32 `[num_qo_heads]`.
        header: trailing tokens (`>= 0`) that neither score nor are scored (the chat template's assistant header).

    Returns:
        fp32 `[num_kv_heads, n - header - window]` on the keys' device: window-attention scores (``"window"``), or
        positions with the first `sinks` tokens at +inf (``"recency"``); summed over KV heads and shared by all of
        them when `scoring.share_across_heads`.
    """
    num_kv_heads, n, _ = key.shape
    scored = n - header  # the queries end here; the keys they see are the prompt before the header
    if scoring.kind == "recency":
        positions = torch.arange(scored - window, device=key.device, dtype=torch.float32)
        scores = positions.masked_fill(positions < scoring.sinks, float("inf")).expand(num_kv_heads, -1)
    else:
        scores = backend.window_scores(
            query[:, scored - window : scored].contiguous(),
            key[:, :scored],
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


def plan_budgets(
    method: Method, shape: ModelShape, prompt_len: int, kv_size: int | None, header: int = 0
) -> torch.Tensor:
    """int64 `[num_layers, num_kv_heads]` host budgets of one prompt under `method`, checked against its contract.

    `kv_size` was checked against the method and the prompt's `header` (`checks.check_kv_size`). None or a
    `kv_size >= prompt_len` keeps the whole prompt in every head. With a `header`, the method plans with its window
    grown by `header` (`with_header`), so every budget holds the header and the window. `method.check_shape` runs
    first, so a method that cannot plan for this model is refused whatever the prompt's length.

    Raises:
        ValueError: the method does not fit the model (e.g. a score file's shape), or `method.plan` returned the
            wrong shape or a budget outside [window, prompt_len].
    """
    method.check_shape(shape)
    full_shape = (shape.num_layers, shape.num_kv_heads)
    if kv_size is None or kv_size >= prompt_len:
        return torch.full(full_shape, prompt_len, dtype=torch.int64)
    method = with_header(method, header)
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
        budgets: int64 `[num_layers, num_kv_heads]` host tensor from `plan_budgets` with the same `header` (or the
            whole prompt everywhere when nothing is compressed).
        cache: the batch's ragged cache; seq: this sequence's index in it.
        header: the prompt's trailing assistant-header tokens (0: none); the `window` queries before them score
            the keys before them, and every head keeps the header and the window (`prefix_scores`).
    """

    def __init__(
        self, method: Method, budgets: torch.Tensor, cache: RaggedKVCache, seq: int, header: int = 0
    ) -> None:
        self.method, self.budgets, self.cache, self.seq, self.header = method, budgets, cache, seq, header
        self.planner = with_header(method, header)  # adapts with the window grown by the header
        self.kept = budgets.clone()  # after `adapt`: the tokens each head really keeps

    def __call__(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sm_scale: float
    ) -> None:
        """Compress one layer (query `[1, Hq, n, D]`, key/value `[1, Hkv, n, D]`, post-RoPE) into the cache."""
        k_src, v_src = key[0].contiguous(), value[0].contiguous()
        n = k_src.shape[1]
        tail = min(self.planner.scoring.window, n)  # the window plus the header: kept by every head
        planned = self.budgets[layer]
        if bool((planned >= n).all()):  # every head keeps the whole prompt: nothing to score
            scores = torch.zeros(k_src.shape[0], n - tail, device=k_src.device)
            budgets = planned
        else:  # some head drops tokens, so n > kv_size >= window + header (check_kv_size)
            weights = self.method.qo_head_weights(layer)
            if weights is not None:
                weights = weights.to(device=k_src.device, dtype=torch.float32)
            scores = prefix_scores(self.cache.backend, self.method.scoring, query[0], k_src,
                                   self.method.scoring.window, sm_scale, weights, self.header)
            budgets = self._checked(layer, self.planner.adapt(layer, planned, scores).cpu(), planned, n, tail)
        self.kept[layer] = budgets
        self.cache.pack(layer, self.seq, budgets, scores, k_src, v_src)

    def _checked(self, layer: int, budgets: torch.Tensor, planned: torch.Tensor, n: int, window: int) -> torch.Tensor:
        name = type(self.method).__name__
        # a cache with a reserve (tensor parallelism) takes a rank's share of a layer-wide adapt, up to the reserve
        if budgets.shape != planned.shape or (int(budgets.sum()) != int(planned.sum()) and not self.cache.reserved):
            raise ValueError(
                f"{name}.adapt changed layer {layer}'s budgets from {planned.tolist()} to {budgets.tolist()}: the "
                "shape and the sum must stay the same"
            )
        if int(budgets.min()) < window or int(budgets.max()) > n:
            raise ValueError(
                f"{name}.adapt gave layer {layer} budgets {budgets.tolist()} outside [{window}, {n}] (window and "
                "header, prompt)"
            )
        return budgets.to(torch.int64)
