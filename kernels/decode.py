"""Ragged flash-decoding: one query token per sequence over the packed per-KV-head ragged cache.

Layout: segment `s = b * num_kv_heads + h` owns rows `kv_indptr[s] .. kv_indptr[s + 1]` of `k_cache`/`v_cache`
(`[total_slots, head_dim]`, contiguous) and the first `kv_lens[s]` of them are valid. Query head `qh` of
sequence `b` (q: `[batch, num_qo_heads, head_dim]`) reads segment `b * num_kv_heads + qh // group_size`, with
`num_kv_heads = kv_lens.numel() // batch` and `group_size = num_qo_heads // num_kv_heads` (HF head order).

Dtypes: q and the caches fp16/bf16/fp32 (they may differ); output in q's dtype; kv_indptr/kv_lens int32.
Any head_dim >= 1 (padded to a power of two >= 16 and masked) and any group size.

Numerics: every loaded tile is upcast to fp32 at once; QK^T, the online softmax (exp2, with
`sm_scale * log2(e)` folded in fp32), P.V, the partial outputs and their log-sum-exp are fp32 (dots with
`input_precision="ieee"`, so no TF32 on GPU); the output is cast once on store. A segment with `kv_lens == 0`
gives zeros. Split boundaries depend only on `chunk_size` and the segment's own length, so results do not
depend on the batch or on `max_chunks`, and chunks are merged in a fixed order (deterministic).

Grid (two launches per call, one when `max_chunks == 1`):
  stage 1 `_decode_stage1_kernel`, grid `(num_segments, max_chunks)`: program (s, c) loads segment s's whole
  query group once as a `[BLOCK_G >= 16, head_dim]` tile (so the segment's K/V is read once for all its query
  heads), streams tokens `c * chunk_size .. (c + 1) * chunk_size` of the segment in BLOCK_N tiles, and writes a
  normalised fp32 partial output plus its log2-sum-exp; a program whose chunk starts at or past `kv_lens[s]`
  exits at once. With `max_chunks == 1` it writes the final output directly and stage 2 is skipped.
  stage 2 `_decode_combine_kernel`, grid `(num_segments,)`: merges the `cdiv(kv_lens[s], chunk_size)` partials of
  segment s in chunk order with an fp32 log-sum-exp combine.

CUDA graphs: the grid depends only on `max_chunks`, sized from capacities
(`max_chunks = cdiv(max segment capacity, chunk_size)`), never on the current lengths, so a captured decode step
stays valid while the lengths grow. Call `plan_decode(capacities)` once per generation and pass both numbers:
then the call reads no device value (no `.item()`, no host sync). The fp32 partial buffers are allocated per call
(the caching allocator serves them inside a graph's private pool).

Not supported: more than one query token per sequence (prefill/extend), paged segments, fp8 caches, autograd.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ._utils import FLOAT_DTYPES, check_kernel_device, check_same_shape, check_tensor, next_power_of_2

LOG2E = 1.4426950408889634
MIN_CHUNK_SIZE = 256  # tokens per stage-1 program chosen by the planner: at least a few BLOCK_N tiles
PROGRAMS_PER_SM = 4  # planner target: stage-1 programs (chunks over all capacities) per SM
DEFAULT_NUM_SMS = 132  # an H100 SXM, used when no CUDA device is visible (only the chunk choice depends on it)


@triton.jit
def _attend_tile(q, k, v, n_mask, m_i, l_i, acc, qk_scale):
    """One BLOCK_N tile of online softmax in the log2 domain; q `[G, D]`, k/v `[N, D]`, all fp32."""
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale  # [BLOCK_G, BLOCK_N]
    s = tl.where(n_mask[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile has at least one valid token
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    return m_new, l_i, acc


@triton.jit
def _decode_stage1_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    kv_indptr_ptr,
    kv_lens_ptr,
    part_out_ptr,
    part_lse_ptr,
    out_ptr,
    qk_scale,
    num_kv_heads,
    stride_q_b,
    stride_q_h,
    stride_o_b,
    stride_o_h,
    GROUP_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    CHUNK_SIZE: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DIRECT_OUT: tl.constexpr,
):
    # q: [batch, num_qo_heads, HEAD_DIM] (strides stride_q_b, stride_q_h, 1); k_cache, v_cache: [total_slots,
    # HEAD_DIM] contiguous; kv_indptr: [num_segments + 1]; kv_lens: [num_segments].
    # part_out: [num_segments, max_chunks, GROUP_SIZE, HEAD_DIM] fp32; part_lse: [num_segments, max_chunks,
    # GROUP_SIZE] fp32 (log2 domain); out: [batch, num_qo_heads, HEAD_DIM] (strides stride_o_b, stride_o_h, 1).
    # Program (s, c) owns tokens c * CHUNK_SIZE .. (c + 1) * CHUNK_SIZE of segment s for its GROUP_SIZE queries.
    tl.static_assert(BLOCK_G >= 16 and BLOCK_N >= 16 and BLOCK_D >= 16, "tl.dot needs M, N, K >= 16")
    seg = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    num_chunks = tl.num_programs(1).to(tl.int64)
    seg_len = tl.load(kv_lens_ptr + seg).to(tl.int64)
    lo = chunk * CHUNK_SIZE
    if not DIRECT_OUT:
        if lo >= seg_len:  # chunk past the segment's valid rows
            return
    hi = tl.minimum(lo + CHUNK_SIZE, seg_len)
    seg_start = tl.load(kv_indptr_ptr + seg).to(tl.int64)

    # Load the segment's query group once: rows h * GROUP_SIZE .. of sequence b, padded to BLOCK_G.
    batch_idx = seg // num_kv_heads
    first_head = (seg % num_kv_heads) * GROUP_SIZE
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    gd_mask = (offs_g < GROUP_SIZE)[:, None] & (offs_d < HEAD_DIM)[None, :]
    q_ptrs = q_ptr + batch_idx * stride_q_b + (first_head + offs_g)[:, None] * stride_q_h + offs_d[None, :]
    q = tl.load(q_ptrs, mask=gd_mask, other=0.0).to(tl.float32)

    # Stream the chunk in BLOCK_N tiles with an fp32 online softmax.
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    for tile_start in range(lo, hi, BLOCK_N):
        n_mask = tile_start + offs_n < hi
        nd_mask = n_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
        rows = (seg_start + tile_start + offs_n)[:, None] * HEAD_DIM + offs_d[None, :]
        k = tl.load(k_cache_ptr + rows, mask=nd_mask, other=0.0).to(tl.float32)
        v = tl.load(v_cache_ptr + rows, mask=nd_mask, other=0.0).to(tl.float32)
        m_i, l_i, acc = _attend_tile(q, k, v, n_mask, m_i, l_i, acc, qk_scale)

    if DIRECT_OUT:  # single chunk: final output, zeros for an empty segment
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        o_ptrs = out_ptr + batch_idx * stride_o_b + (first_head + offs_g)[:, None] * stride_o_h + offs_d[None, :]
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=gd_mask)
    else:
        item = (seg * num_chunks + chunk) * GROUP_SIZE + offs_g
        tl.store(part_out_ptr + item[:, None] * HEAD_DIM + offs_d[None, :], acc / l_i[:, None], mask=gd_mask)
        tl.store(part_lse_ptr + item, m_i + tl.log2(l_i), mask=offs_g < GROUP_SIZE)


@triton.jit
def _decode_combine_kernel(
    part_out_ptr,
    part_lse_ptr,
    kv_lens_ptr,
    out_ptr,
    num_kv_heads,
    max_chunks,
    stride_o_b,
    stride_o_h,
    GROUP_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    CHUNK_SIZE: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # part_out: [num_segments, max_chunks, GROUP_SIZE, HEAD_DIM] fp32; part_lse: [num_segments, max_chunks,
    # GROUP_SIZE] fp32 (log2); kv_lens: [num_segments]; out: [batch, num_qo_heads, HEAD_DIM].
    # Program s merges the non-empty chunks of segment s, in chunk order, for its GROUP_SIZE query heads.
    seg = tl.program_id(0).to(tl.int64)
    seg_len = tl.load(kv_lens_ptr + seg).to(tl.int64)
    num_chunks = tl.minimum(tl.cdiv(seg_len, CHUNK_SIZE), max_chunks)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    g_mask = offs_g < GROUP_SIZE
    gd_mask = g_mask[:, None] & (offs_d < HEAD_DIM)[None, :]

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for chunk in range(num_chunks):
        item = (seg * max_chunks + chunk) * GROUP_SIZE + offs_g
        lse = tl.load(part_lse_ptr + item, mask=g_mask, other=0.0)
        part = tl.load(part_out_ptr + item[:, None] * HEAD_DIM + offs_d[None, :], mask=gd_mask, other=0.0)
        m_new = tl.maximum(m_i, lse)  # finite: every merged chunk is non-empty
        alpha = tl.exp2(m_i - m_new)
        weight = tl.exp2(lse - m_new)
        acc = acc * alpha[:, None] + part * weight[:, None]
        l_i = l_i * alpha + weight
        m_i = m_new

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # empty segment: acc == 0 -> zeros
    batch_idx = seg // num_kv_heads
    first_head = (seg % num_kv_heads) * GROUP_SIZE
    o_ptrs = out_ptr + batch_idx * stride_o_b + (first_head + offs_g)[:, None] * stride_o_h + offs_d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=gd_mask)


def _pick_chunk_size(capacities: Sequence[int], target_programs: int) -> int:
    """Smallest power of two >= MIN_CHUNK_SIZE whose chunk count over all capacities fits `target_programs`.

    Chunks beyond the longest capacity add nothing, so the search stops there (then every segment is one chunk).
    """
    longest = max(capacities, default=0)
    chunk = MIN_CHUNK_SIZE
    while chunk < longest and sum(-(-cap // chunk) for cap in capacities) > target_programs:
        chunk *= 2
    return chunk


def _pick_block_n(head_dim: int, chunk_size: int) -> int:
    """Tokens per stage-1 tile: 64 for head_dim <= 64, else 32 (two fp32 K/V tiles in registers); never more
    than the chunk, never below the 16 that `tl.dot` needs."""
    block_n = 64 if head_dim <= 64 else 32
    return max(16, min(block_n, next_power_of_2(chunk_size)))


def _num_sms(device: torch.device) -> int:
    """SM count of `device` (or of the current CUDA device); DEFAULT_NUM_SMS without CUDA."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return DEFAULT_NUM_SMS


def plan_decode(
    capacities: torch.Tensor | Sequence[int],
    *,
    chunk_size: int | None = None,
    num_sms: int | None = None,
) -> tuple[int, int]:
    """Choose `(chunk_size, max_chunks)` for `ragged_decode_attention` once per generation, from capacities.

    Args:
        capacities: `[num_segments]` rows owned by each segment (`SegmentPlan.capacities`, or
            `kv_indptr[1:] - kv_indptr[:-1]`), a tensor (read on the host once: a sync for a GPU tensor) or ints.
        chunk_size: keep this chunk size and only size `max_chunks` for it; default: the smallest power of two
            >= 256 such that all chunks of all capacities fit `4 * num_sms` stage-1 programs.
        num_sms: SM count of the target GPU; default: the capacities' CUDA device, else the current CUDA device,
            else 132.

    Returns:
        `(chunk_size, max_chunks)` with `max_chunks = max(1, cdiv(max capacity, chunk_size))`: valid for every
        length the segments can reach, so one captured decode step serves the whole generation.
    """
    if isinstance(capacities, torch.Tensor):
        device = capacities.device
        capacities = capacities.detach().to("cpu", torch.int64).tolist()
    else:
        device = torch.device("cpu")
        capacities = [int(cap) for cap in capacities]
    if any(cap < 0 for cap in capacities):
        raise ValueError(f"capacities must be >= 0, got min {min(capacities)}")
    if chunk_size is None:
        num_sms = _num_sms(device) if num_sms is None else num_sms
        _check_positive_int("num_sms", num_sms)
        chunk_size = _pick_chunk_size(capacities, PROGRAMS_PER_SM * num_sms)
    _check_positive_int("chunk_size", chunk_size)
    return chunk_size, max(1, -(-max(capacities, default=0) // chunk_size))


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int")


def _check_decode_args(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_lens: torch.Tensor,
    out: torch.Tensor | None,
) -> tuple[int, int]:
    """Host-side checks (no device reads); returns `(num_kv_heads, group_size)`."""
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES, last_dim_contiguous=True)
    check_kernel_device("q", q)
    device = q.device
    check_tensor("k_cache", k_cache, ndim=2, dtypes=FLOAT_DTYPES, device=device, contiguous=True)
    check_tensor("v_cache", v_cache, ndim=2, dtypes=(k_cache.dtype,), device=device, contiguous=True)
    check_same_shape("v_cache", v_cache, "k_cache", k_cache)
    check_tensor("kv_lens", kv_lens, ndim=1, dtypes=(torch.int32,), device=device, contiguous=True)
    check_tensor("kv_indptr", kv_indptr, ndim=1, dtypes=(torch.int32,), device=device, contiguous=True)
    batch, num_qo_heads, head_dim = q.shape
    if k_cache.shape[1] != head_dim:
        raise ValueError(f"k_cache has head_dim {k_cache.shape[1]} but q has head_dim {head_dim}")
    if kv_indptr.numel() != kv_lens.numel() + 1:
        raise ValueError(
            f"kv_indptr has {kv_indptr.numel()} entries but kv_lens has {kv_lens.numel()}; "
            "kv_indptr needs num_segments + 1"
        )
    num_segments = kv_lens.numel()
    if batch < 1 or num_segments == 0 or num_segments % batch:
        raise ValueError(f"kv_lens has {num_segments} segments, not a positive multiple of q's batch {batch}")
    num_kv_heads = num_segments // batch
    if num_qo_heads % num_kv_heads:
        raise ValueError(f"q has {num_qo_heads} query heads, not a multiple of num_kv_heads={num_kv_heads}")
    if out is not None:
        check_tensor("out", out, ndim=3, dtypes=(q.dtype,), device=device, last_dim_contiguous=True)
        check_same_shape("out", out, "q", q)
    return num_kv_heads, num_qo_heads // num_kv_heads


def ragged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_lens: torch.Tensor,
    sm_scale: float | None = None,
    *,
    max_chunks: int | None = None,
    chunk_size: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decode query per sequence attending to its ragged per-KV-head segments (split-K flash-decoding).

    Query head `qh` of sequence `b` attends to the first `kv_lens[s]` rows of segment
    `s = b * num_kv_heads + qh // group_size`; a head whose segment is empty gets zeros. Same semantics as
    `reference.ragged_decode_attention_ref`.

    Host syncs: with `max_chunks` given the call reads no device value (CUDA-graph safe). With `max_chunks=None`
    it calls `plan_decode` on `kv_indptr`'s capacities: one device-to-host copy (a sync on a GPU).

    Args:
        q: `[batch, num_qo_heads, head_dim]` fp16/bf16/fp32, last dim contiguous.
        k_cache, v_cache: `[total_slots, head_dim]` fp16/bf16/fp32, contiguous, same dtype.
        kv_indptr: `[batch * num_kv_heads + 1]` int32 row offsets; kv_lens: `[batch * num_kv_heads]` int32.
        sm_scale: softmax scale, default `1 / sqrt(head_dim)`.
        max_chunks: stage-1 programs per segment; must be >= `cdiv(max segment capacity, chunk_size)` (tokens
            past `max_chunks * chunk_size` would be ignored, unchecked). Needs `chunk_size`.
        chunk_size: tokens per stage-1 program; default (only with `max_chunks=None`): `plan_decode`'s choice.
        out: optional `[batch, num_qo_heads, head_dim]` output in q's dtype, last dim contiguous; written and
            returned.

    Returns:
        `[batch, num_qo_heads, head_dim]` in q's dtype (`out` when given).

    Raises:
        TypeError / ValueError: a wrong dtype, device, rank, shape, layout or tuning value, naming the argument.
    """
    num_kv_heads, group_size = _check_decode_args(q, k_cache, v_cache, kv_indptr, kv_lens, out)
    if max_chunks is None:
        chunk_size, max_chunks = plan_decode(kv_indptr[1:] - kv_indptr[:-1], chunk_size=chunk_size)
    elif chunk_size is None:
        raise ValueError("max_chunks was given without chunk_size: pass both (see plan_decode)")
    _check_positive_int("chunk_size", chunk_size)
    _check_positive_int("max_chunks", max_chunks)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    head_dim = q.shape[2]
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    _launch_decode(q, k_cache, v_cache, kv_indptr, kv_lens, out, scale * LOG2E, num_kv_heads, group_size,
                   chunk_size, max_chunks)
    return out


def _launch_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_lens: torch.Tensor,
    out: torch.Tensor,
    qk_scale: float,
    num_kv_heads: int,
    group_size: int,
    chunk_size: int,
    max_chunks: int,
) -> None:
    """Stage 1 over `(num_segments, max_chunks)`, then (when `max_chunks > 1`) the combine over segments."""
    num_segments = kv_lens.numel()
    head_dim = q.shape[2]
    direct = max_chunks == 1
    part_shape = (num_segments, max_chunks, group_size) if not direct else (0, 0, 0)
    part_out = torch.empty((*part_shape, head_dim), dtype=torch.float32, device=q.device)
    part_lse = torch.empty(part_shape, dtype=torch.float32, device=q.device)
    meta = dict(
        GROUP_SIZE=group_size,
        HEAD_DIM=head_dim,
        CHUNK_SIZE=chunk_size,
        BLOCK_G=max(16, next_power_of_2(group_size)),
        BLOCK_D=max(16, next_power_of_2(head_dim)),
    )
    _decode_stage1_kernel[(num_segments, max_chunks)](
        q, k_cache, v_cache, kv_indptr, kv_lens, part_out, part_lse, out,
        qk_scale, num_kv_heads, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        BLOCK_N=_pick_block_n(head_dim, chunk_size), DIRECT_OUT=direct, num_warps=4, num_stages=2, **meta,
    )  # fmt: skip
    if not direct:
        _decode_combine_kernel[(num_segments,)](
            part_out, part_lse, kv_lens, out, num_kv_heads, max_chunks, out.stride(0), out.stride(1),
            num_warps=4, **meta,
        )  # fmt: skip
