"""HeadKV-R and HeadKV-R2: per-head budgets from offline head-importance scores."""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from .allocation import fill_to_total
from ..arguments import Flag, PathOrDict, Real
from .base import Method, ModelShape, Scoring, scoring_accepts
from .defaults import calibrated_table, value_at
from .head_scores import ScoreSource, check_head_table, describe_source, read_head_scores, resolve_score_source

PUBLISHED_BETA = 1.01  # KVCache-Factory's `--head_beta`: beta when neither the user nor a sidecar gives one


def head_probabilities(scores: torch.Tensor, temp: float = 1.0) -> torch.Tensor:
    """`p = (S / sum S) ** temp`, renormalised: fp64, same shape as the mean-score table `S`.

    Computed as `(S / max S) ** temp` renormalised (the same `p`): the largest entry is 1, so no `temp >= 0`
    underflows the sum to zero. `temp = 0` gives every head the same share.
    """
    if scores.sum() <= 0:
        raise ValueError("head scores are all zero: cannot share a budget by them")
    probs = (scores / scores.max()) ** temp
    return probs / probs.sum()


def query_head_capacities(probs: torch.Tensor, budget: int, beta: float) -> torch.Tensor:
    """HeadKV's published per-query-head capacity (METHODS.md 1(b)), window excluded, before rounding.

    `cap = p * floor(B / beta) * L * H + B - floor(B / beta)` with `p = head_probabilities(S)` over all `L * H`
    query heads and `B = budget`. fp64 `[L, H]`; its sum is exactly `L * H * B`. The published code then rounds
    half to even (`torch.round`) with no clamp and no re-balancing.
    """
    pooled = math.floor(budget / beta)
    return probs * (pooled * probs.numel()) + (budget - pooled)


class HeadKV(Method):
    """HeadKV (Fu et al., ICLR 2025, "Not All Heads Matter"): head budgets from offline importance scores.

    Budgets. Per query head the published formula (`query_head_capacities`, `B = kv_size - window`): a floor
    `B - floor(B/beta)` for every head plus a shared pool `floor(B/beta) * L * H_q` split by the head's share `p`
    of the total importance. GQA reduction: a KV head's share is the **sum** of its group's shares, so its budget
    is `p_kv * floor(B/beta) * L * H_kv + B - floor(B/beta) + window`, i.e. the mean of its group's published
    per-query-head capacities plus the window; the per-head average stays `kv_size`. A budget above the prompt
    is cut to it and the surplus goes to the other KV heads in proportion to `p_kv` (`fill_to_total`), so the
    total is exactly `kv_size * L * H_kv` whenever `prompt_len >= kv_size`.

    `faithful=True`: published rounding per query head (half to even), the group reduced as KVCache-Factory's
    `kv_head` port does (round of the mean of the group's rounded capacities), the window added, and budgets
    above the prompt silently cut (no re-balancing). Note: KVCache-Factory's port also forgets to subtract the
    window from `B`; HeadKV's own code subtracts it, and so does this.

    Scoring (HeadKV's runners, METHODS.md 1(c), 1(e)): window mean, max-pool 7, `window=8`; the query heads of a
    group are mean-reduced into one KV-head score. `beta=None` (the default): the calibrated beta for the kv_size
    from the model's sidecar `engine/data/<model-slug>-defaults.json` when the packaged score file is used (rule in
    `defaults.py`: the value of the largest calibrated kv_size at or below, else the smallest's), otherwise 1.01
    (KVCache-Factory's `--head_beta`; HeadKV sweeps 1.005-10); `beta_at(kv_size)` says which beta plans a kv_size.
    `temp=1`. `head_scores` is a path or dict in HeadKV's JSON format; when None, the packaged
    `engine/data/<model-slug>-<kind>.json` for `model_name` is used, else construction fails naming that file.
    Accepted: `beta` a finite number >= 1 (the floor `B - floor(B/beta)` must not be negative), `temp` a finite
    number >= 0, the scoring parameters as `Scoring` accepts them; `kv_size >= window`.
    """

    score_files: ClassVar[dict[str, str]]
    accepts = {**scoring_accepts("window", "pool", "pool_size", "group_reduce"), "beta": Real(1.0),
               "temp": Real(0.0), "faithful": Flag(), "head_scores": PathOrDict()}

    calibrated: ClassVar[dict[str, str]] = {  # parameters whose None reads the sidecar, as `raggedkv methods` says it
        "beta": "None: calibrated per kv_size from engine/data/<model>-defaults.json (the value of the largest "
                "calibrated kv_size at or below, else the smallest's), 1.01 without one",
    }

    def __init__(self, head_scores: ScoreSource | None = None, model_name: str | None = None,
                 beta: float | None = None, window: int = 8, pool: str = "max", pool_size: int = 7,
                 group_reduce: str = "mean", temp: float = 1.0, faithful: bool = False) -> None:
        self.beta = None if beta is None else self.accept("beta", beta)
        packaged = head_scores is None  # the calibrated values were chosen with the packaged scores
        self.beta_table = calibrated_table(model_name, self.name, "beta") if beta is None and packaged else None
        self.faithful = self.accept("faithful", faithful)
        temp = self.accept("temp", temp)
        self.scoring = Scoring(window=window, window_reduce="mean", group_reduce=group_reduce, pool=pool,
                               pool_size=pool_size)
        self.source = resolve_score_source(self.accept("head_scores", head_scores), model_name,
                                           self.score_files["head_scores"], self.name, "head_scores")
        self.table = read_head_scores(self.source)
        self.probs = head_probabilities(self.table, temp)

    def beta_at(self, kv_size: int) -> float:
        """The beta that plans `kv_size`: the user's, else the calibrated one (`defaults.value_at`), else 1.01."""
        if self.beta is not None:
            return self.beta
        return PUBLISHED_BETA if self.beta_table is None else value_at(self.beta_table, kv_size)

    def check_shape(self, shape: ModelShape) -> None:
        check_head_table(self.table, shape, f"head-score file {describe_source(self.source)}")

    def plan(self, shape: ModelShape, prompt_len: int, kv_size: int) -> torch.Tensor:
        window, beta = self.scoring.window, self.beta_at(kv_size)
        budget = kv_size - window
        grouped = (shape.num_layers, shape.num_kv_heads, shape.group_size)
        if prompt_len <= kv_size:
            return torch.full(grouped[:2], prompt_len, dtype=torch.int64)
        if self.faithful:
            caps = torch.round(query_head_capacities(self.probs, budget, beta))
            kv_caps = torch.round(caps.view(grouped).mean(dim=-1)).to(torch.int64)
            return (kv_caps + window).clamp(max=prompt_len)
        share = self.probs.view(grouped).sum(dim=-1)
        pooled = math.floor(budget / beta)
        alloc = share * (pooled * shape.num_layers * shape.num_kv_heads) + (budget - pooled + window)
        return fill_to_total(alloc, kv_size * shape.num_layers * shape.num_kv_heads, prompt_len, share)


class HeadKVR(HeadKV):
    """HeadKV-R: budgets from Retrieval-heads scores (copy-paste score). See `HeadKV`."""

    name = "headkv-r"
    description = "per-head budgets from Retrieval-heads scores (HeadKV-R)"
    score_files = {"head_scores": "retrieval"}


class HeadKVR2(HeadKV):
    """HeadKV-R2: budgets from Retrieval-Reasoning-heads scores (the paper's Eq. 2). See `HeadKV`."""

    name = "headkv-r2"
    description = "per-head budgets from Retrieval-Reasoning-heads scores (HeadKV-R2, the method of record)"
    score_files = {"head_scores": "reasoning"}
