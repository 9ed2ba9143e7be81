"""O(1) append into the packed ragged KV cache: one new K/V row per segment, `kv_lens += 1` on the device.

Layout: segment `s = b * num_kv_heads + h` owns rows `kv_indptr[s] .. kv_indptr[s + 1]` of `k_cache` and
`v_cache` (`[total_slots, head_dim]`, contiguous); the new token of segment `s` goes to row
`kv_indptr[s] + kv_lens[s]`. Exactly as `reference.append_kv_ref`:
- the length is clamped to `[0, capacity]` on the device first (a negative length counts as 0, so the token goes
  to the segment's first row and the length becomes 1);
- a segment whose clamped length is at capacity is left unchanged, its stored length included (the caller
  reserves decode headroom);
- a row outside the buffer (`kv_indptr` past its end, a caller error) is never written; that segment is left
  unchanged too.

Dtypes: k_new/v_new fp16/bf16/fp32, cast on store to the cache dtype (fp16/bf16/fp32); a pure copy when the
dtypes agree (exact under the interpreter too). kv_indptr/kv_lens int32 or int64 (each its own).

Grid: `(num_segments,)`, one program per segment, each copying `head_dim` elements of K and of V and setting
its own length, so there are no races and no atomics. One launch per call, no host sync, no allocation: the
call can be captured in a CUDA graph. `_append_kv_launches` describes that launch without running it.

Not supported: several new tokens per segment in one call; growing a segment past its capacity.
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


@triton.jit
def _append_kv_kernel(
    k_new_ptr,
    v_new_ptr,
    k_cache_ptr,
    v_cache_ptr,
    kv_indptr_ptr,
    kv_lens_ptr,
    stride_k_new_seg,
    stride_v_new_seg,
    total_slots,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # k_new, v_new: [num_segments, HEAD_DIM], row strides stride_{k,v}_new_seg, last dim contiguous.
    # k_cache, v_cache: [total_slots, HEAD_DIM] contiguous. kv_indptr: [num_segments + 1], kv_lens: [num_segments].
    # Program s owns segment s: length = clamp(kv_lens[s], 0, capacity); it writes row kv_indptr[s] + length
    # and sets kv_lens[s] = length + 1, unless the segment is full or the row lies outside the buffer.
    seg = tl.program_id(0).to(tl.int64)
    seg_start = tl.load(kv_indptr_ptr + seg).to(tl.int64)
    seg_end = tl.load(kv_indptr_ptr + seg + 1).to(tl.int64)
    capacity = tl.maximum(seg_end - seg_start, 0)
    length = tl.minimum(tl.maximum(tl.load(kv_lens_ptr + seg).to(tl.int64), 0), capacity)
    row = seg_start + length
    if (length >= capacity) | (row < 0) | (row >= total_slots):  # full, or a broken kv_indptr: leave it
        return

    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    k = tl.load(k_new_ptr + seg * stride_k_new_seg + offs_d, mask=d_mask, other=0.0)
    v = tl.load(v_new_ptr + seg * stride_v_new_seg + offs_d, mask=d_mask, other=0.0)
    tl.store(k_cache_ptr + row * HEAD_DIM + offs_d, k.to(k_cache_ptr.dtype.element_ty), mask=d_mask)
    tl.store(v_cache_ptr + row * HEAD_DIM + offs_d, v.to(v_cache_ptr.dtype.element_ty), mask=d_mask)
    tl.store(kv_lens_ptr + seg, (length + 1).to(kv_lens_ptr.dtype.element_ty))


def check_append_args(
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_lens: torch.Tensor,
) -> None:
    """Host-side checks of dtype, device, rank, shape agreement and layout; reads no device values.

    Shared by the Triton launcher and the CPU path of `torch.ops.raggedkv.append_kv`, so both refuse the same
    arguments with the same message (the launcher also checks that its tensors can reach a Triton kernel).
    """
    check_tensor("k_cache", k_cache, ndim=2, dtypes=FLOAT_DTYPES, contiguous=True)
    device = k_cache.device
    check_tensor("v_cache", v_cache, ndim=2, dtypes=(k_cache.dtype,), device=device, contiguous=True)
    check_same_shape("v_cache", v_cache, "k_cache", k_cache)
    check_tensor("kv_lens", kv_lens, ndim=1, dtypes=INDEX_DTYPES, device=device, contiguous=True)
    check_tensor("kv_indptr", kv_indptr, ndim=1, dtypes=INDEX_DTYPES, device=device, contiguous=True)
    if kv_indptr.numel() != kv_lens.numel() + 1:
        raise ValueError(
            f"kv_indptr has {kv_indptr.numel()} entries but kv_lens has {kv_lens.numel()}; "
            "kv_indptr needs num_segments + 1"
        )
    expected_shape = (kv_lens.numel(), k_cache.shape[1])
    for name, t in (("k_new", k_new), ("v_new", v_new)):
        check_tensor(name, t, ndim=2, dtypes=FLOAT_DTYPES, device=device, last_dim_contiguous=True)
        if tuple(t.shape) != expected_shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}; expected [num_segments, head_dim] = {list(expected_shape)} "
                "(num_segments from kv_lens, head_dim from k_cache)"
            )


def _append_kv_launches(
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_lens: torch.Tensor,
) -> list[Launch]:
    """The one launch of `append_kv` for checked arguments: shapes and strides only, no device reads (meta
    tensors work). Its grid is empty when there are no segments."""
    num_segments, head_dim = kv_lens.shape[0], k_cache.shape[1]
    return [
        Launch(
            kernel=_append_kv_kernel,
            grid=(num_segments,),
            args=(k_new, v_new, k_cache, v_cache, kv_indptr, kv_lens, k_new.stride(0), v_new.stride(0),
                  k_cache.shape[0]),
            constexprs={"HEAD_DIM": head_dim, "BLOCK_D": next_power_of_2(head_dim)},
            num_warps=1,
            num_stages=1,
        )
    ]


def append_kv(
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_lens: torch.Tensor,
) -> None:
    """Write one new K/V row per segment at `kv_indptr[s] + kv_lens[s]` and increment `kv_lens`, in place.

    The length is clamped to `[0, capacity]` on the device first (negative counts as 0). A segment whose
    clamped length is at capacity (`capacity = kv_indptr[s + 1] - kv_indptr[s]`) is left unchanged, its length
    included. Nothing outside rows `kv_indptr[s] .. kv_indptr[s + 1]` and inside the buffer is written. No host
    sync: safe inside a CUDA-graph capture. Same semantics as `reference.append_kv_ref`.

    Args:
        k_new, v_new: `[num_segments, head_dim]` fp16/bf16/fp32, row `s = b * num_kv_heads + h`; the last dim
            must be contiguous, rows may be strided (e.g. `k.view(batch * num_kv_heads, head_dim)` of a
            `[batch, num_kv_heads, head_dim]` view). Cast to the cache dtype on store.
        k_cache, v_cache: `[total_slots, head_dim]` fp16/bf16/fp32, contiguous, same dtype; written in place.
        kv_indptr: `[num_segments + 1]` int32/int64 row offsets (segment capacities).
        kv_lens: `[num_segments]` int32/int64 valid rows per segment; set in place to the clamped length + 1.

    Raises:
        TypeError / ValueError: a wrong dtype, device, rank, shape or layout, naming the argument.

    Not supported: more than one new token per segment per call.
    """
    check_kernel_device("k_cache", k_cache)
    check_append_args(k_new, v_new, k_cache, v_cache, kv_indptr, kv_lens)
    for launch in _append_kv_launches(k_new, v_new, k_cache, v_cache, kv_indptr, kv_lens):
        launch()
