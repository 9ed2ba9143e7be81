"""Select and pack: each segment keeps its top-`budget` prefix tokens plus its window, gathered into the cache.

Layout and shapes (a segment is one (sequence, KV head); source segment `i` goes to cache segment
`first_segment + i`):
    scores `[num_src, m]`: pooled window scores of the `m = n - w` prefix tokens of every source segment.
    budgets `[num_src]` int32/int64: prefix tokens each segment keeps, `0 <= budgets[i] <= m` (a different k for
        every segment).
    k_src, v_src `[num_src, n, head_dim]`: the full prompt keys/values; the last `w` tokens are the window. Any
        strides, last dim contiguous (e.g. a `[batch * num_kv_heads, n, head_dim]` view of HF's layout).
    k_cache, v_cache `[total_slots, head_dim]` contiguous; segment `s` owns rows `kv_indptr[s] .. kv_indptr[s+1]`.
    kv_indptr `[num_segments + 1]`, kv_lens `[num_segments]` int32/int64.

Semantics are exactly `reference.select_and_pack_ref`: segment `first_segment + i` receives, from its first row
on, its kept prefix tokens in position order, then the `w` window tokens, and `kv_lens` becomes
`budgets[i] + w`. Ties in `scores` go to the lower position. Nothing else is written.

Metadata contract: `select_and_pack` validates `budgets` and `kv_indptr` on the host (one sync, at prefill
time). The kernel does not rely on it: it clamps each budget to `[0, m]` and the packed length to the segment's
capacity on the device, and masks rows outside the buffer, so launches built by `_select_and_pack_launches` never
write outside rows `kv_indptr[s] .. kv_indptr[s + 1]` either.

Launch structure (fixed, independent of the number of segments; no host sync besides argument validation):
    1. torch: a stable descending sort of `scores` ranks the prefix tokens (ties to the lower position); the first
       `budgets[i]` of each row are the kept ones; a second sort puts them in position order
       -> `src_pos [num_src, m]` int64, kept positions ascending, then filler `m`.
    2. `_select_pack_kernel`, grid `(num_src, cdiv(n, BLOCK_T))`: program (segment, block of destination
       slots `t`) maps slot `t` to its source token (`src_pos[t]` for `t < budget`, window token
       `m + t - budget` after that), gathers those K and V rows and stores them contiguously at
       `kv_indptr[segment] + t`; programs past `budget + w` exit at once; block 0 also sets `kv_lens`.
       Pure copies (cast to the cache dtype on store), exact in every dtype, also under the interpreter.
    `_select_and_pack_launches` builds step 1's ranking and step 2's launch from shapes alone (meta tensors work).

Tested under the Triton interpreter (CPU) against the reference, all three dtypes; not yet run on a GPU (the
kernel report compiles it spill-free for sm_80 and sm_90).
Not supported: AdaKV-style global selection across segments (give the per-segment budgets), scores of
different lengths in one call (call once per sequence, with `first_segment`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    Launch,
    check_kernel_device,
    check_same_shape,
    check_tensor,
    next_power_of_2,
)

BLOCK_T = 64  # destination slots per program
SCORE_DTYPES = FLOAT_DTYPES + (torch.float64,)


@triton.jit
def _select_pack_kernel(
    src_pos_ptr, budgets_ptr, k_src_ptr, v_src_ptr, k_cache_ptr, v_cache_ptr, kv_indptr_ptr, kv_lens_ptr,
    first_segment, m, n, head_dim, total_slots,
    stride_pos_seg, stride_ks_seg, stride_ks_tok, stride_vs_seg, stride_vs_tok,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # src_pos_ptr: [num_src, m] int64, kept prefix positions ascending (first budgets[i] entries are valid).
    # budgets_ptr: [num_src]; k_src_ptr, v_src_ptr: [num_src, n, head_dim], last dim contiguous.
    # k_cache_ptr, v_cache_ptr: [total_slots, head_dim] contiguous; kv_indptr_ptr: [num_segments + 1];
    # kv_lens_ptr: [num_segments]. Program (i, blk): destination slots blk*BLOCK_T .. +BLOCK_T of segment
    # first_segment + i. Budget clamped to [0, m], length to the segment's capacity; rows outside the buffer masked.
    src = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    segment = first_segment + src
    budget = tl.minimum(tl.maximum(tl.load(budgets_ptr + src).to(tl.int64), 0), m)
    seg_start = tl.load(kv_indptr_ptr + segment).to(tl.int64)
    capacity = tl.maximum(tl.load(kv_indptr_ptr + segment + 1).to(tl.int64) - seg_start, 0)
    length = tl.minimum(budget + (n - m), capacity)
    if blk == 0:
        tl.store(kv_lens_ptr + segment, length.to(kv_lens_ptr.dtype.element_ty))
    if blk * BLOCK_T >= length:
        return

    # Source token of every destination slot: a kept prefix token, then the window in order.
    t = blk * BLOCK_T + tl.arange(0, BLOCK_T)
    rows = seg_start + t
    t_ok = (t < length) & (rows >= 0) & (rows < total_slots)
    is_prefix = t < budget
    pos = tl.load(src_pos_ptr + src * stride_pos_seg + t, mask=is_prefix, other=0)
    pos = tl.where(is_prefix, pos, m + t - budget)

    # Gather the K and V rows and store them contiguously in the segment.
    d = tl.arange(0, BLOCK_D)
    mask = t_ok[:, None] & (d < head_dim)[None, :]
    dst = rows[:, None] * head_dim + d[None, :]
    k = tl.load(k_src_ptr + src * stride_ks_seg + pos[:, None] * stride_ks_tok + d[None, :], mask=mask, other=0.0)
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    v = tl.load(v_src_ptr + src * stride_vs_seg + pos[:, None] * stride_vs_tok + d[None, :], mask=mask, other=0.0)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def check_select_and_pack_args(
    scores: torch.Tensor,
    budgets: torch.Tensor,
    k_src: torch.Tensor,
    v_src: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_lens: torch.Tensor,
    first_segment: int,
) -> None:
    """Raise TypeError/ValueError naming the first bad argument; reads budgets and kv_indptr on the host.

    Shared by the Triton launcher and the CPU path of `torch.ops.raggedkv.select_and_pack`, so both refuse the
    same arguments with the same message."""
    check_tensor("scores", scores, ndim=2, dtypes=SCORE_DTYPES)
    device = scores.device
    check_tensor("budgets", budgets, ndim=1, dtypes=INDEX_DTYPES, device=device, contiguous=True)
    check_tensor("k_src", k_src, ndim=3, dtypes=FLOAT_DTYPES, device=device, last_dim_contiguous=True)
    check_tensor("v_src", v_src, ndim=3, dtypes=FLOAT_DTYPES, device=device, last_dim_contiguous=True)
    check_tensor("k_cache", k_cache, ndim=2, dtypes=FLOAT_DTYPES, device=device, contiguous=True)
    check_tensor("v_cache", v_cache, ndim=2, dtypes=FLOAT_DTYPES, device=device, contiguous=True)
    check_tensor("kv_indptr", kv_indptr, ndim=1, dtypes=INDEX_DTYPES, device=device, contiguous=True)
    check_tensor("kv_lens", kv_lens, ndim=1, dtypes=INDEX_DTYPES, device=device, contiguous=True)
    check_same_shape("v_src", v_src, "k_src", k_src)
    check_same_shape("v_cache", v_cache, "k_cache", k_cache)

    num_src, m = scores.shape
    if budgets.shape[0] != num_src:
        raise ValueError(f"budgets has {budgets.shape[0]} entries but scores has {num_src} rows (one per segment)")
    if k_src.shape[0] != num_src or k_src.shape[1] < m:
        raise ValueError(
            f"k_src has shape {tuple(k_src.shape)}; need [num_src={num_src}, n >= m={m}, head_dim] to match scores"
        )
    if k_cache.shape[1] != k_src.shape[2]:
        raise ValueError(f"k_cache has head_dim {k_cache.shape[1]} but k_src has head_dim {k_src.shape[2]}")
    num_segments = kv_lens.shape[0]
    if kv_indptr.shape[0] != num_segments + 1:
        raise ValueError(f"kv_indptr has {kv_indptr.shape[0]} entries; need len(kv_lens) + 1 = {num_segments + 1}")
    if not isinstance(first_segment, int) or isinstance(first_segment, bool):
        raise TypeError(f"first_segment must be an int, got {type(first_segment).__name__}")
    if first_segment < 0 or first_segment + num_src > num_segments:
        raise ValueError(
            f"first_segment={first_segment} with {num_src} source segments does not fit the {num_segments} "
            "segments of kv_lens"
        )
    _check_budgets(budgets, m, k_src.shape[1] - m, kv_indptr, first_segment, k_cache.shape[0])


def _check_budgets(
    budgets: torch.Tensor, m: int, w: int, kv_indptr: torch.Tensor, first_segment: int, total_slots: int
) -> None:
    """Every budget in `[0, m]`, and every target segment inside the cache with room for `budget + w` rows."""
    budgets_host = budgets.detach().to("cpu", torch.int64)
    bounds = kv_indptr[first_segment : first_segment + budgets_host.numel() + 1].detach().to("cpu", torch.int64)
    start, end = bounds[:-1], bounds[1:]
    capacity = end - start

    out_of_range = ((budgets_host < 0) | (budgets_host > m)).nonzero()
    if out_of_range.numel():
        i = int(out_of_range[0])
        raise ValueError(
            f"budgets[{i}]={int(budgets_host[i])} (segment {first_segment + i}) is outside [0, m={m}] "
            "(m = prefix tokens in scores)"
        )
    outside_cache = ((start < 0) | (end < start) | (end > total_slots)).nonzero()
    if outside_cache.numel():
        i = int(outside_cache[0])
        raise ValueError(
            f"kv_indptr puts segment {first_segment + i} at rows {int(start[i])}..{int(end[i])}, outside the "
            f"cache's {total_slots} rows"
        )
    too_small = (budgets_host + w > capacity).nonzero()
    if too_small.numel():
        i = int(too_small[0])
        raise ValueError(
            f"budgets[{i}]={int(budgets_host[i])} plus the window w={w} exceeds the capacity {int(capacity[i])} of "
            f"segment {first_segment + i} (kv_indptr)"
        )


def _kept_positions(scores: torch.Tensor, budgets: torch.Tensor) -> torch.Tensor:
    """`[num_src, m]` int64: each row's top-`budgets[i]` positions in ascending order, then filler `m`.

    Ties go to the lower position (stable descending sort)."""
    m = scores.shape[1]
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    kept = torch.arange(m, device=scores.device)[None, :] < budgets.to(torch.int64)[:, None]
    return torch.where(kept, order, m).sort(dim=1).values


def _select_and_pack_launches(
    scores: torch.Tensor,
    budgets: torch.Tensor,
    k_src: torch.Tensor,
    v_src: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_lens: torch.Tensor,
    first_segment: int = 0,
) -> list[Launch]:
    """The pack launch of `select_and_pack` for checked arguments, its ranking (`src_pos`) enqueued as scratch.

    Reads no device value: the grid comes from shapes (`num_src`, `n`), so meta tensors work (the ranking is then
    a meta tensor too). Its grid is empty when there are no source segments.
    """
    num_src, m = scores.shape
    n, head_dim = k_src.shape[1], k_src.shape[2]
    src_pos = _kept_positions(scores, budgets)
    return [
        Launch(
            kernel=_select_pack_kernel,
            grid=(num_src, max(1, triton.cdiv(n, BLOCK_T))),  # block 0 always sets kv_lens
            args=(src_pos, budgets, k_src, v_src, k_cache, v_cache, kv_indptr, kv_lens,
                  first_segment, m, n, head_dim, k_cache.shape[0],
                  src_pos.stride(0), k_src.stride(0), k_src.stride(1), v_src.stride(0), v_src.stride(1)),
            constexprs={"BLOCK_T": BLOCK_T, "BLOCK_D": max(16, next_power_of_2(head_dim))},
            num_warps=4,
        )
    ]


def select_and_pack(
    scores: torch.Tensor,
    budgets: torch.Tensor,
    k_src: torch.Tensor,
    v_src: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_lens: torch.Tensor,
    first_segment: int = 0,
) -> None:
    """Keep each source segment's top-`budgets[i]` prefix tokens plus its window, packed into the cache in place.

    Segment `first_segment + i` receives, from its first row on, the kept prefix tokens in position order, then
    the `w = n - m` window tokens; `kv_lens[first_segment + i]` becomes `budgets[i] + w`. Ties in `scores` go to
    the lower position. Rows past `budgets[i] + w`, other segments and their `kv_lens` are left untouched.

    Args:
        scores: `[num_src, m]` fp16/bf16/fp32/fp64 scores of the `m` prefix tokens of each source segment.
        budgets: `[num_src]` int32/int64, `0 <= budgets[i] <= m` and `budgets[i] + w` within the segment's capacity.
        k_src, v_src: `[num_src, n, head_dim]` fp16/bf16/fp32, `n >= m`, last dim contiguous; the last `n - m`
            tokens are the window.
        k_cache, v_cache: `[total_slots, head_dim]` fp16/bf16/fp32, contiguous, written in place (values cast to
            the cache dtype).
        kv_indptr: `[num_segments + 1]` int32/int64 row offsets; kv_lens: `[num_segments]` int32/int64, set in place
            (their old values are never read).
        first_segment: cache segment of source segment 0.

    Raises:
        TypeError: a tensor of the wrong dtype, or a non-int `first_segment`.
        ValueError: wrong ndim/device/layout, shapes that disagree, a budget outside `[0, m]` or beyond a
            segment's capacity, segments outside the cache or outside `kv_lens`.

    Reads `budgets` and `kv_indptr` on the host to validate them (one sync, at prefill time).
    Not supported: a global (cross-segment) budget, autograd.
    """
    check_kernel_device("scores", scores)
    check_select_and_pack_args(scores, budgets, k_src, v_src, k_cache, v_cache, kv_indptr, kv_lens, first_segment)
    for launch in _select_and_pack_launches(
        scores, budgets, k_src, v_src, k_cache, v_cache, kv_indptr, kv_lens, first_segment
    ):
        launch()
