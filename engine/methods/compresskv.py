"""CompressKV: layer budgets from offline eviction error, tokens chosen by semantic-retrieval heads."""

from __future__ import annotations

import torch

from ..arguments import Flag, Int, PathOrDict, Real
from .allocation import fill_to_total, settle
from .base import Method, ModelShape, Scoring, scoring_accepts
from .head_scores import (
    ScoreSource,
    check_head_table,
    check_layer_table,
    describe_source,
    read_head_scores,
    read_layer_scores,
    resolve_score_source,
)


def error_aware_layer_budgets(importance: torch.Tensor, kv_size: int, min_tokens: int,
                              max_tokens: int) -> torch.Tensor:
    """CompressKV's allocation (METHODS.md 4.3), window included: int64 `[L]` summing to `kv_size * L`.

    `C_l = clip(min + round(importance_l * (kv_size * L - min * L)), min, max)` (round half to even, as
    `np.round`), then +/-1 passes in importance order until the sum is `kv_size * L` (`settle`).
    `importance` is L1-normalised first (published files already sum to 1).
    """
    importance = importance / importance.sum()
    layers = importance.numel()
    total = kv_size * layers
    extra = torch.round(importance * (total - min_tokens * layers))
    budgets = (min_tokens + extra).clamp(min_tokens, max_tokens).to(torch.int64)
    return settle(budgets, total, min_tokens, max_tokens, importance)


def retrieval_head_weights(head_table: torch.Tensor, first_k: int) -> torch.Tensor:
    """fp32 `[L, H_q]`: `1 / k` on each layer's top-`k` query heads by score (`k = min(first_k, H_q)`), else 0.

    Ties go to the lower head index.
    """
    layers, heads = head_table.shape
    k = min(first_k, heads)
    top = torch.sort(head_table, dim=1, descending=True, stable=True).indices[:, :k]
    weights = torch.zeros(layers, heads, dtype=torch.float32)
    weights.scatter_(1, top, 1.0 / k)
    return weights


class CompressKV(Method):
    """CompressKV (TUDa-HWAI, 2025): error-aware layer budgets, one token set per layer from its SRH heads.

    Budgets. Per layer `C_l` from `error_aware_layer_budgets` on the layer-score file's `avg_score` (floor
    `min_tokens=32`, raised to the window and capped at `kv_size`; cap `max_ratio * kv_size`, `max_ratio=3`),
    shared by all KV heads of the layer, so the total is `kv_size * L * H_kv`. A layer whose `C_l` exceeds the
    prompt is cut to it and the surplus goes to the other layers (up to `min(prompt_len, 3 * kv_size)`) in
    proportion to `avg_score`; `faithful=True` leaves it lost instead (published: such a layer is simply not
    compressed).

    Scoring (METHODS.md 4.2): the layer's top `first_k=4` semantic-retrieval query heads (by mean score in the
    head-score file, "layer-head" format) score with window sum, `window=8`, avg-pool kernel 5; their scores are
    averaged (weights `1/first_k`, group reduce "sum", summed over KV heads: pooling is linear, so this equals the
    published mean of pooled scores) and every KV head of the layer keeps the same tokens.

    `layer_scores` / `head_scores`: path or dict; when None, the packaged
    `engine/data/<model-slug>-layer-scores.json` / `-semantic.json` for `model_name`, else
    construction fails naming the file needed. `raggedkv calibrate-layers` computes a layer-score file.
    Accepted: `first_k` an int >= 1, `min_tokens` an int >= 0, `max_ratio` a finite number >= 1, `window` and
    `pool_size` as `Scoring` accepts them; `kv_size >= window`.
    """

    name = "compresskv"
    description = "error-aware layer budgets; tokens from the layer's top-4 semantic retrieval heads (CompressKV)"
    score_files = {"layer_scores": "layer-scores", "head_scores": "semantic"}
    accepts = {**scoring_accepts("window", "pool_size"), "first_k": Int(1), "min_tokens": Int(0),
               "max_ratio": Real(1.0), "faithful": Flag(), "layer_scores": PathOrDict(),
               "head_scores": PathOrDict()}

    def __init__(self, layer_scores: ScoreSource | None = None, head_scores: ScoreSource | None = None,
                 model_name: str | None = None, window: int = 8, pool_size: int = 5, first_k: int = 4,
                 min_tokens: int = 32, max_ratio: float = 3.0, faithful: bool = False) -> None:
        self.scoring = Scoring(window=window, window_reduce="sum", group_reduce="sum", pool="avg",
                               pool_size=pool_size, share_across_heads=True)
        first_k = self.accept("first_k", first_k)
        self.min_tokens = self.accept("min_tokens", min_tokens)
        self.max_ratio = self.accept("max_ratio", max_ratio)
        self.faithful = self.accept("faithful", faithful)
        self.layer_source = resolve_score_source(self.accept("layer_scores", layer_scores), model_name,
                                                 self.score_files["layer_scores"], self.name, "layer_scores")
        self.head_source = resolve_score_source(self.accept("head_scores", head_scores), model_name,
                                                self.score_files["head_scores"], self.name, "head_scores")
        self.layer_table = read_layer_scores(self.layer_source)
        if self.layer_table.sum() <= 0:
            raise ValueError(f"layer-score file {describe_source(self.layer_source)} has only zero scores")
        self.head_table = read_head_scores(self.head_source)
        self.weights = retrieval_head_weights(self.head_table, first_k)

    def check_shape(self, shape: ModelShape) -> None:
        check_layer_table(self.layer_table, shape, f"layer-score file {describe_source(self.layer_source)}")
        check_head_table(self.head_table, shape, f"head-score file {describe_source(self.head_source)}")

    def plan(self, shape: ModelShape, prompt_len: int, kv_size: int) -> torch.Tensor:
        # No layer can hold more than the sequence's total, so the cap never needs to exceed it.
        max_tokens = min(int(self.max_ratio * kv_size), kv_size * shape.num_layers)
        min_tokens = min(max(self.min_tokens, self.scoring.window), kv_size)
        layers = error_aware_layer_budgets(self.layer_table, kv_size, min_tokens, max_tokens)
        if self.faithful:
            layers = layers.clamp(max=prompt_len)
        else:
            layers = fill_to_total(layers.to(torch.float64), kv_size * shape.num_layers,
                                   min(prompt_len, max_tokens), self.layer_table)
        return layers[:, None].expand(-1, shape.num_kv_heads).contiguous()

    def qo_head_weights(self, layer: int) -> torch.Tensor:
        return self.weights[layer]
