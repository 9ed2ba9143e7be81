"""Ragged flash-decoding: one query token per sequence over the packed per-KV-head ragged cache.

Layout: segment `s = b * num_kv_heads + h` owns rows `kv_indptr[s] .. kv_indptr[s + 1]` of `k_cache`/`v_cache`
(`[total_slots, head_dim]`, contiguous) and the first `kv_lens[s]` of them are valid. Query head `qh` of
sequence `b` (q: `[batch, num_qo_heads, head_dim]`) reads segment `b * num_kv_heads + qh // group_size`, with
`num_kv_heads = kv_lens.numel() // batch` and `group_size = num_qo_heads // num_kv_heads` (HF head order).

Dtypes: q and the caches fp16/bf16/fp32 (they may differ); output in q's dtype; kv_indptr/kv_lens int32 or
int64. Any head_dim >= 1 (padded to a power of two >= 16 and masked) and any group size.

Contract for embedders: the kernels read only rows `kv_indptr[s] .. kv_indptr[s + 1]` of segment s, whatever
`kv_lens` holds. On the device each length is clamped to `[0, capacity]` (capacity `kv_indptr[s + 1] -
kv_indptr[s]`, and 0 where that is negative): a negative length gives zeros, an over-capacity one attends to
the whole segment, and no neighbouring row is ever read. The host checks what costs no sync (dtypes, devices,
shapes, `kv_indptr` of `num_segments + 1` entries); it never reads `kv_indptr` or `kv_lens` values when
`max_chunks` is given. `kv_indptr` must be non-decreasing with `kv_indptr[-1] <= total_slots` (unchecked: that
needs a device read), and `max_chunks * chunk_size` must cover the largest capacity (`plan_decode` does).

Numerics (`decode_kernels.py` has the measurements): fp32 caches take an exact fp32 path (`ieee` dots).
fp16/bf16 caches load K/V tiles in their dtype and use tensor-core dots with fp32 accumulation; P is split into
high and low halves in the cache dtype, which keeps the result at fp32 level (measured 3.8e-6 relative with
bf16, 2.6e-6 with fp16, against 2.4e-3 / 2.6e-4 for a single cast); a q of another dtype is split the same way.
Softmax (exp2), LSE and the combine are fp32. A segment of length 0 gives zeros. Split boundaries depend only on
`chunk_size` and the segment's own length, and chunks are merged in a fixed order: results do not depend on the
batch or on `max_chunks` and are deterministic.

Grid (two launches per call, one when `max_chunks == 1`), built by `_decode_launches` (a pure function):
  stage 1 `_decode_stage1_kernel`, grid `(num_segments, max_chunks)`: program (s, c) loads segment s's whole
  query group once as a `[BLOCK_G >= 16, head_dim]` tile (so the segment's K/V is read once for all its query
  heads), streams tokens `c * chunk_size .. (c + 1) * chunk_size` of the segment in BLOCK_N tiles, and writes a
  normalised fp32 partial output plus its log2-sum-exp; a program whose chunk starts at or past the clamped
  length exits at once. With `max_chunks == 1` it writes the final output directly and stage 2 is skipped.
  stage 2 `_decode_combine_kernel`, grid `(num_segments,)`: merges the non-empty partials of segment s in chunk
  order with an fp32 log-sum-exp combine.

Stage-1 configuration (`decode_plan.stage1_config`): 32-token tiles, 4 warps, 2 stages on fp16/bf16 caches; 8
warps on fp32 caches. Ahead-of-time compile with Triton 3.9 (3.6, the GPU image's, within a few registers and
instructions), cubin read back with cuobjdump; SASS per 32-token tile = the main loop's instructions:
| shape, cache | target | regs | spills | shared | warps/SM (limit) | SASS per tile (HMMA, FFMA) |
|---|---|---|---|---|---|---|
| Llama-3-8B (32/8 heads, d 128) bf16 | sm_90 | 88 | 0 | 22 KB | 20 (regs) | 247 (24, 2) |
| Llama-3-8B bf16 | sm_80 | 80 | 0 | 22 KB | 24 (regs) | 241 (24, 2) |
| SmolLM2 (9/3 heads, d 64) bf16 | sm_90 | 63 | 0 | 12 KB | 32 (regs) | 186 (12, 2) |
| SmolLM2 bf16 | sm_80 | 72 | 0 | 12 KB | 28 (regs) | 183 (12, 2) |
| SmolLM2 fp32 (exact, 8 warps) | sm_90 | 66 | 0 | 22 KB | 24 (regs) | 481 (0, 258) |
| before: fp32 upcast of every tile, Llama bf16 | sm_90 | 255 | 184 B stack | 56 KB | 8 (regs) | 1,598 (0, 1,026) |
At Llama-3-8B a 32-token tile is 16 KB of K/V: 4 warps x 247 instructions is about 250 issue cycles of an SM's
four schedulers against about 1,100 cycles of its share of HBM bandwidth (H100: 3.35 TB/s over 132 SMs), so the
kernel is memory-bound with room to spare (the upcast version could not pass about 71%). 64-token tiles with 4
warps need 164 registers (12 warps/SM); 3 stages add shared memory without a gain in occupancy.

Combine not folded into stage 1: folding would let the last program of a segment (found with an atomic counter)
merge the partials, saving one dependent launch (about 1-2 us in a CUDA graph) per layer. It needs a zeroed
semaphore buffer that lives across CUDA-graph replays (an API change: the caller must own it), a release/acquire
fence per program, and it gains only where stage 1 itself takes a few microseconds (the compressed batch-1
regime). Without GPU timings to show the gain, the two-launch design stays; `max_chunks == 1` already runs one.

CUDA graphs: the grid depends only on `max_chunks`, sized from capacities
(`max_chunks = cdiv(max segment capacity, chunk_size)`), never on the current lengths, so a captured decode step
stays valid while the lengths grow. Call `plan_decode(capacities)` once per generation and pass both numbers:
then the call reads no device value (no `.item()`, no host sync). The fp32 partial buffers are allocated per call
(the caching allocator serves them inside a graph's private pool).

Not supported: more than one query token per sequence (prefill/extend), paged segments, fp8 caches, autograd.
"""

from __future__ import annotations

import math

import torch

from ._utils import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    Launch,
    check_kernel_device,
    check_same_shape,
    check_tensor,
    next_power_of_2,
)
from .decode_kernels import LOG2E, _decode_combine_kernel, _decode_stage1_kernel
from .decode_plan import (  # noqa: F401 - _pick_block_n and _pick_chunk_size re-exported for the tests
    MIN_DOT_SIZE,
    _pick_block_n,
    _pick_chunk_size,
    check_positive_int,
    plan_decode,
    stage1_config,
)

def _check_decode_args(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_lens: torch.Tensor,
    out: torch.Tensor | None,
) -> None:
    """Host-side checks of shapes, dtypes, devices and layouts (no device reads)."""
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES, last_dim_contiguous=True)
    check_kernel_device("q", q)
    device = q.device
    check_tensor("k_cache", k_cache, ndim=2, dtypes=FLOAT_DTYPES, device=device, contiguous=True)
    check_tensor("v_cache", v_cache, ndim=2, dtypes=(k_cache.dtype,), device=device, contiguous=True)
    check_same_shape("v_cache", v_cache, "k_cache", k_cache)
    check_tensor("kv_lens", kv_lens, ndim=1, dtypes=INDEX_DTYPES, device=device, contiguous=True)
    check_tensor("kv_indptr", kv_indptr, ndim=1, dtypes=INDEX_DTYPES, device=device, contiguous=True)
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
    if num_qo_heads % (num_segments // batch):
        raise ValueError(
            f"q has {num_qo_heads} query heads, not a multiple of num_kv_heads={num_segments // batch}"
        )
    if out is not None:
        check_tensor("out", out, ndim=3, dtypes=(q.dtype,), device=device, last_dim_contiguous=True)
        check_same_shape("out", out, "q", q)


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
        kv_indptr: `[batch * num_kv_heads + 1]` int32/int64 row offsets; kv_lens: `[batch * num_kv_heads]`
            int32/int64 valid rows, clamped to `[0, capacity]` on the device (see the module docstring).
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
    _check_decode_args(q, k_cache, v_cache, kv_indptr, kv_lens, out)
    if max_chunks is None:
        chunk_size, max_chunks = plan_decode(kv_indptr[1:] - kv_indptr[:-1], chunk_size=chunk_size)
    elif chunk_size is None:
        raise ValueError("max_chunks was given without chunk_size: pass both (see plan_decode)")
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    for launch in _decode_launches(q, k_cache, v_cache, kv_indptr, kv_lens, out, sm_scale=sm_scale,
                                   chunk_size=chunk_size, max_chunks=max_chunks):
        launch()
    return out


def _decode_launches(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_lens: torch.Tensor,
    out: torch.Tensor,
    *,
    sm_scale: float | None,
    chunk_size: int,
    max_chunks: int,
) -> list[Launch]:
    """The launches of one `ragged_decode_attention` call: stage 1, then the combine when `max_chunks > 1`.

    Pure: reads no device value and launches nothing, so it works on `device="meta"` tensors (the kernel report
    compiles exactly these launches ahead of time). Allocates the fp32 scratch `part_out` `[num_segments,
    max_chunks, group_size, head_dim]` and `part_lse` `[num_segments, max_chunks, group_size]` on q's device
    (empty when `max_chunks == 1`).

    Args: as `ragged_decode_attention` (shapes and dtypes checked there); `out` `[batch, num_qo_heads,
    head_dim]` in q's dtype; `sm_scale` None means `1 / sqrt(head_dim)`; `chunk_size`, `max_chunks` positive
    ints (`plan_decode`).

    Raises:
        ValueError: `chunk_size` or `max_chunks` not a positive int.
    """
    check_positive_int("chunk_size", chunk_size)
    check_positive_int("max_chunks", max_chunks)
    batch, num_qo_heads, head_dim = q.shape
    num_segments = kv_lens.numel()
    num_kv_heads = num_segments // batch
    group_size = num_qo_heads // num_kv_heads
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    direct = max_chunks == 1
    part_shape = (num_segments, max_chunks, group_size) if not direct else (0, 0, 0)
    part_out = torch.empty((*part_shape, head_dim), dtype=torch.float32, device=q.device)
    part_lse = torch.empty(part_shape, dtype=torch.float32, device=q.device)
    meta = dict(
        GROUP_SIZE=group_size,
        HEAD_DIM=head_dim,
        CHUNK_SIZE=chunk_size,
        BLOCK_G=max(MIN_DOT_SIZE, next_power_of_2(group_size)),
        BLOCK_D=max(MIN_DOT_SIZE, next_power_of_2(head_dim)),
    )
    exact = k_cache.dtype == torch.float32
    block_n, num_warps, num_stages = stage1_config(head_dim, chunk_size, exact=exact)
    # The interpreter (the only way Triton runs on CPU tensors) computes bf16 arithmetic wrongly: there the bf16
    # dots take their operands, already rounded to bf16, through exact fp32 dots (same products, fp32 sums).
    upcast_dots = exact or (k_cache.dtype == torch.bfloat16 and k_cache.device.type == "cpu")
    launches = [
        Launch(
            _decode_stage1_kernel,
            (num_segments, max_chunks),
            (q, k_cache, v_cache, kv_indptr, kv_lens, part_out, part_lse, out, scale * LOG2E, num_kv_heads,
             q.stride(0), q.stride(1), out.stride(0), out.stride(1)),
            dict(meta, BLOCK_N=block_n, DIRECT_OUT=direct, UPCAST_DOTS=upcast_dots),
            num_warps=num_warps,
            num_stages=num_stages,
        )
    ]
    if not direct:
        launches.append(
            Launch(
                _decode_combine_kernel,
                (num_segments,),
                (part_out, part_lse, kv_indptr, kv_lens, out, num_kv_heads, max_chunks, out.stride(0),
                 out.stride(1)),
                meta,
                num_warps=4,
                num_stages=1,
            )
        )
    return launches
