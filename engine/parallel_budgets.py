"""Budget arithmetic of tensor parallelism: which KV heads a rank holds, per-rank totals, and rank balancing.

Under tensor parallelism (`parallel.py`) rank `r` of `size` holds the contiguous block of KV heads
`[r * H / size, (r + 1) * H / size)` of every layer (transformers' column-wise `k_proj`/`v_proj` split, as
`transformers.distributed.tensor_parallel.get_kv_heads_per_rank` sizes it). Each rank's ragged cache is sized before
prefill, so a rank's total per layer is fixed then, or bounded by a reserve where a layer-wide `adapt` can move
budget across ranks (`adapted_rank_bound`); a decode step waits for the rank with the most KV in each layer.

Pure functions over int64 CPU tensors; nothing here communicates.
"""

from __future__ import annotations

import math

import torch

from .methods.allocation import fill_to_total, round_to_total


def rank_heads(num_heads: int, size: int, rank: int) -> slice:
    """The heads (KV or query) rank `rank` of `size` holds: a contiguous block of `num_heads // size`.

    Raises:
        ValueError: `num_heads` does not divide by `size`, or `rank` is not in `[0, size)`.
    """
    if size < 1 or num_heads % size:
        raise ValueError(f"{num_heads} heads do not split evenly over a tensor-parallel size of {size}")
    if not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}), got {rank}")
    per_rank = num_heads // size
    return slice(rank * per_rank, (rank + 1) * per_rank)


def check_heads_split(num_qo_heads: int, num_kv_heads: int, size: int) -> None:
    """Raise ValueError unless the query and KV heads both split evenly over `size` tensor-parallel ranks."""
    for kind, heads in (("query", num_qo_heads), ("KV", num_kv_heads)):
        if heads % size:
            raise ValueError(
                f"tensor parallelism over {size} ranks needs head counts that divide by {size}; this model has "
                f"{heads} {kind} heads ({num_qo_heads} query / {num_kv_heads} KV): use a size that divides both"
            )


def rank_totals(budgets: torch.Tensor, size: int) -> torch.Tensor:
    """int64 `[..., size]`: the sum of each rank's block of heads, from budgets `[..., num_kv_heads]`."""
    *lead, heads = budgets.shape
    rank_heads(heads, size, 0)  # checks the split
    return budgets.reshape(*lead, size, heads // size).sum(dim=-1)


def slowest_rank_factor(budgets: torch.Tensor, size: int) -> float:
    """How long a step waits for the fullest rank, against a perfect split: `sum_l max_r T[l, r] / sum_l mean_r
    T[l, r]` for budgets `[num_layers, num_kv_heads]` and rank totals `T` (1.0 = balanced).

    Each layer's decode attention ends when its fullest rank does, and layers run one after the other, so the
    per-layer maxima add up; the mean is what the same tokens cost split evenly.
    """
    totals = rank_totals(budgets.to(torch.int64), size).to(torch.float64)
    return float(totals.max(dim=-1).values.sum() / totals.mean(dim=-1).sum())


def rescale_block(budgets: torch.Tensor, target: int, low: int, high: int) -> torch.Tensor:
    """One rank's head budgets (int64 `[heads]`, in `[low, high]`) moved to sum `target`, keeping their proportions.

    Shrinking scales every head's part above `low` by the same factor; growing hands the extra out in proportion
    to that part (`fill_to_total`, never above `high`); largest-remainder rounding keeps the sum exact.

    Raises:
        ValueError: `target` outside `[heads * low, heads * high]`.
    """
    heads = budgets.numel()
    if not heads * low <= target <= heads * high:
        raise ValueError(f"target {target} is outside [{heads * low}, {heads * high}] for {heads} heads")
    current = int(budgets.sum())
    values = budgets.to(torch.float64)
    above = values - low
    if target == current:
        return budgets.to(torch.int64).clone()
    if target < current:
        return round_to_total(low + above * ((target - heads * low) / (current - heads * low)), target, high)
    return fill_to_total(values, target, high, above)


def fit_rank_totals(budgets: torch.Tensor, targets: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """One layer's budgets (int64 `[num_kv_heads]`) with each rank's block rescaled to its target total
    (int64 `[size]`, `rescale_block`)."""
    size = targets.numel()
    out = budgets.to(torch.int64).clone()
    for rank in range(size):
        block = rank_heads(budgets.numel(), size, rank)
        out[block] = rescale_block(budgets[block], int(targets[rank]), low, high)
    return out


def check_rank_balance(epsilon: object) -> None:
    """Raise ValueError unless `epsilon` (the `rank_balance` option) is a finite number >= 0."""
    if isinstance(epsilon, bool) or not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"rank_balance (epsilon) must be a finite number >= 0, got {epsilon!r}")


def balance_ranks(budgets: torch.Tensor, size: int, epsilon: float, low: int, high: int) -> torch.Tensor:
    """Budgets `[num_layers, num_kv_heads]` whose rank totals stay within `(1 + epsilon)` x the layer's mean.

    Per layer, the cap is `max(ceil(mean), floor((1 + epsilon) * mean))` per rank (the least cap any split can
    meet). A rank over it keeps the cap, its heads shrunk in proportion to their budget above `low`; the surplus
    goes to the ranks under it in proportion to their heads' budget above `low` (the method's own importance,
    water-filled so no rank passes the cap and no head passes `high`), and inside each rank to its heads the
    same way. Layer totals are unchanged and every budget stays in `[low, high]`.

    Args:
        budgets: int64 `[num_layers, num_kv_heads]` in `[low, high]`.
        epsilon: finite, >= 0.
        low, high: the budget bounds (window, prompt length).

    Raises:
        ValueError: a negative or non-finite `epsilon`, or heads that do not split over `size`.
    """
    check_rank_balance(epsilon)
    num_layers, heads = budgets.shape
    per_rank = heads // size
    totals = rank_totals(budgets, size)
    out = budgets.to(torch.int64).clone()
    for layer in range(num_layers):
        layer_total = int(totals[layer].sum())
        mean = layer_total / size
        cap = min(max(math.ceil(mean), math.floor((1 + epsilon) * mean)), per_rank * high)
        if int(totals[layer].max()) <= cap:
            continue
        importance = (budgets[layer] - low).to(torch.float64).view(size, per_rank).sum(dim=-1)
        start = totals[layer].clamp(max=cap).to(torch.float64)
        targets = fill_to_total(start, layer_total, cap, importance)
        out[layer] = fit_rank_totals(budgets[layer], targets, low, high)
    return out


def adapted_rank_bound(planned: torch.Tensor, size: int, rank: int, low: int, high: int,
                       alpha: float | None = None) -> torch.Tensor:
    """int64 `[num_layers]`: the most tokens rank `rank`'s heads can hold after a layer-wide `adapt` that keeps each
    layer's total and every head in `[low, high]`, from the whole model's planned budgets int64
    `[num_layers, num_kv_heads]`; never below the rank's planned total.

    Any such `adapt`: the layer total less the other ranks' heads' `low` each, at most `high` per head. With
    `alpha` (Ada-SnapKV's non-faithful arithmetic, `adakv.ada_capacities`): head `h` gets `c_h * (1 - alpha) +
    alpha * T / H` selected tokens rounded up or down (`T`: the layer's selected tokens, `c_h`: its share of the
    layer's top `T`, at most `candidates = high - low` per head), so the rank's heads hold at most their `low` each
    plus `(1 - alpha) * min(T, heads * candidates) + alpha * T * heads / H`, rounded up, plus one per head.
    """
    num_layers, num_heads = planned.shape
    heads = rank_heads(num_heads, size, rank)
    per_rank = heads.stop - heads.start
    layer_totals = planned.to(torch.int64).sum(dim=1)
    bound = torch.clamp(layer_totals - (num_heads - per_rank) * low, max=per_rank * high)
    if alpha is not None:
        candidates = high - low
        selected = (layer_totals - num_heads * low).to(torch.float64)
        pooled = (1 - alpha) * selected.clamp(max=per_rank * candidates) + alpha * selected * per_rank / num_heads
        ada = per_rank * low + (pooled.ceil().to(torch.int64) + per_rank).clamp(max=per_rank * candidates)
        bound = torch.minimum(bound, ada)
    return torch.maximum(bound, planned[:, heads].to(torch.int64).sum(dim=1))
