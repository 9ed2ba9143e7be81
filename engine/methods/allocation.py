"""Integer budget arithmetic shared by the methods: bounds, exact totals and the published +/-1 fixing.

Every function works on fp64/int64 CPU tensors of any shape (flattened in row-major order, so for
`[num_layers, num_kv_heads]` tables ties go to the lower layer, then the lower head).
"""

from __future__ import annotations

import torch

from .base import ModelShape


def uniform_budgets(shape: ModelShape, prompt_len: int, kv_size: int) -> torch.Tensor:
    """int64 `[num_layers, num_kv_heads]` filled with `min(kv_size, prompt_len)`."""
    return torch.full((shape.num_layers, shape.num_kv_heads), min(kv_size, prompt_len), dtype=torch.int64)


def round_to_total(values: torch.Tensor, total: int, upper: torch.Tensor | int) -> torch.Tensor:
    """Round non-negative reals to integers summing to `total` (largest remainder), never above `upper`.

    Each entry becomes `floor(v)` or `floor(v) + 1`; the `total - sum(floor(v))` entries with the largest
    fractional parts (among those still below `upper`) get the `+1`. Requires `sum(values) == total` up to
    floating-point error and `values <= upper`.
    """
    upper = torch.as_tensor(upper, dtype=torch.float64).expand_as(values)
    base = values.floor()
    short = total - int(base.sum().item())
    if short > 0:
        remainder = torch.where(base < upper, values - base, -1.0).flatten()
        chosen = torch.sort(remainder, descending=True, stable=True).indices[:short]
        base.view(-1)[chosen] += 1
    if int(base.sum().item()) != total or bool((base > upper).any()):
        raise AssertionError(f"cannot round to total {total} under the upper bounds (values sum {values.sum():.6f})")
    return base.to(torch.int64)


def fill_to_total(
    alloc: torch.Tensor, total: int, upper: torch.Tensor | int, importance: torch.Tensor
) -> torch.Tensor:
    """Integer budgets from a real allocation, capped at `upper`, whose sum is `min(total, sum(upper))`.

    Entries above `upper` are cut to it, and the tokens cut (plus any gap between `sum(alloc)` and `total`) are
    handed to the other entries in proportion to `importance` (water-filling: an entry that reaches `upper`
    stops receiving and the rest is shared again among the others). Entries with zero importance receive
    nothing while an entry with positive importance has room; after that the rest is shared equally. Finally
    `round_to_total`. Entries never decrease, so a lower bound met by `alloc` is kept.

    Args:
        alloc: fp64 allocation with `sum(alloc) <= total` (up to rounding).
        total: the integer total wanted.
        upper: integer upper bound per entry (broadcast).
        importance: fp64 non-negative weights, same shape as `alloc`.
    """
    upper = torch.as_tensor(upper, dtype=torch.float64).expand_as(alloc)
    if total >= upper.sum().item():
        return upper.to(torch.int64)
    filled = torch.minimum(alloc, upper)
    for _ in range(filled.numel()):
        surplus = total - filled.sum().item()
        has_room = filled < upper
        if surplus <= 1e-9 * max(total, 1) or not bool(has_room.any()):
            break
        weight = torch.where(has_room, importance, 0.0)
        if weight.sum() <= 0:
            weight = has_room.to(torch.float64)
        filled = torch.minimum(filled + surplus * weight / weight.sum(), upper)
    return round_to_total(filled, total, upper)


def settle(
    values: torch.Tensor, total: int, lower: torch.Tensor | int, upper: torch.Tensor | int, priority: torch.Tensor
) -> torch.Tensor:
    """The published +/-1 fixing (CompressKV): move integer `values` to sum `total` one token at a time.

    While short, every entry below `upper` gets `+1` in decreasing `priority` order, pass after pass; while over,
    every entry above `lower` gets `-1` in increasing `priority` order. Stops early if no entry can move (the
    total is then out of reach). Ties go to the lower index.
    """
    values = values.clone()
    lower = torch.as_tensor(lower, dtype=values.dtype).expand_as(values)
    upper = torch.as_tensor(upper, dtype=values.dtype).expand_as(values)
    flat, flat_lower, flat_upper = values.view(-1), lower.reshape(-1), upper.reshape(-1)
    descending = torch.sort(priority.flatten(), descending=True, stable=True).indices
    ascending = torch.sort(priority.flatten(), stable=True).indices
    while (diff := total - int(flat.sum().item())) != 0:
        order = descending if diff > 0 else ascending
        movable = order[flat[order] < flat_upper[order]] if diff > 0 else order[flat[order] > flat_lower[order]]
        if movable.numel() == 0:
            break
        flat[movable[: abs(diff)]] += 1 if diff > 0 else -1
    return values
