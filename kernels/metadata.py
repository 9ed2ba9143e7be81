"""Ragged-cache metadata: per-segment budgets plus decode headroom -> `kv_indptr`, `kv_lens`, total slots.

Pure torch, run once per prefill (never inside a decode step). A segment is one (sequence, KV head); its
capacity is the tokens it keeps at prefill plus `headroom` rows for generated tokens, optionally rounded up to a
multiple of `align` rows (256 makes every segment a run of FlashAttention-2 paged-KV pages).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._utils import INDEX_DTYPES, check_tensor


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """Where every segment lives in the cache.

    kv_indptr: `[num_segments + 1]` int32 row offsets, `kv_indptr[0] == start`.
    kv_lens: `[num_segments]` int32 zeros (`select_and_pack` sets them).
    capacities: `[num_segments]` int32 rows owned by each segment.
    total_slots: rows from `start` to the end of the last segment (a host int).
    """

    kv_indptr: torch.Tensor
    kv_lens: torch.Tensor
    capacities: torch.Tensor
    total_slots: int


def plan_segments(
    budgets: torch.Tensor,
    headroom: int,
    *,
    align: int = 1,
    start: int = 0,
    device: torch.device | str | None = None,
) -> SegmentPlan:
    """Lay out segments back to back from row `start`.

    Args:
        budgets: `[num_segments]` int32/int64, tokens each segment keeps at prefill (window included), >= 0.
        headroom: rows reserved per segment for generated tokens, >= 0.
        align: capacities are rounded up to a multiple of this, >= 1.
        start: row offset of the first segment (several layers or sequences can share one buffer).
        device: where the returned tensors live (default: `budgets.device`).

    Returns:
        A `SegmentPlan`. Reads `budgets` on the host once (a sync when they live on a GPU).

    Raises:
        ValueError: a negative budget, headroom or start, or `align < 1`, naming the argument.
    """
    check_tensor("budgets", budgets, ndim=1, dtypes=INDEX_DTYPES)
    if headroom < 0:
        raise ValueError(f"headroom={headroom} must be >= 0")
    if align < 1:
        raise ValueError(f"align={align} must be >= 1")
    if start < 0:
        raise ValueError(f"start={start} must be >= 0")
    budgets_host = budgets.detach().to("cpu", torch.int64)
    if budgets_host.numel() and int(budgets_host.min()) < 0:
        raise ValueError(f"budgets must be >= 0, got min {int(budgets_host.min())}")
    capacities = (budgets_host + headroom + align - 1) // align * align
    indptr = torch.zeros(budgets_host.numel() + 1, dtype=torch.int64)
    indptr[1:] = capacities.cumsum(0)
    indptr += start
    if int(indptr[-1]) >= 2**31:
        raise ValueError(f"the plan needs {int(indptr[-1])} rows, more than int32 row offsets can address")
    device = budgets.device if device is None else torch.device(device)
    return SegmentPlan(
        kv_indptr=indptr.to(device=device, dtype=torch.int32),
        kv_lens=torch.zeros(budgets_host.numel(), dtype=torch.int32, device=device),
        capacities=capacities.to(device=device, dtype=torch.int32),
        total_slots=int(indptr[-1]) - start,
    )
