"""raggedkv segments -> FlashInfer metadata (page size 1, each segment a request), for embedders with FlashInfer.

A raggedkv layer cache is `k_cache`/`v_cache` `[total_slots, head_dim]`; segment `s = b * num_kv_heads + h`
owns rows `kv_indptr[s] .. kv_indptr[s + 1]` and its first `kv_lens[s]` are valid (see `raggedkv.kernels`).
FlashInfer sees the same cache as pages of one token:

    paged cache (NHD)   k_cache.view(total_slots, 1, 1, head_dim)    [num_pages, page_size=1, num_kv_heads=1, D]
    request s           segment s: one (sequence, KV head)
    its pages           paged_kv_indices[paged_kv_indptr[s] : paged_kv_indptr[s + 1]] = its valid rows, in order
    its query           q.view(batch * num_kv_heads, group_size, head_dim)[s]: the GQA group's query heads

So FlashInfer is planned with `num_kv_heads=1`, `num_qo_heads=group_size` (`num_qo_heads // num_kv_heads` of the
model), `page_size=1`, `batch_size=num_segments`; every request then has its own KV length, which is what a
per-head (ragged) budget needs. The query reshape is free because raggedkv uses HF head order (query head
`qh` reads KV head `qh // group_size`); the output `[num_segments, group_size, head_dim]` reshapes back to
`[batch, num_qo_heads, head_dim]`.

FlashInfer's conventions (flashinfer.page.get_seq_lens): a request's length is
`max(num_pages - 1, 0) * page_size + last_page_len`, and the wrapper docs ask `1 <= last_page_len <= page_size`
for a request with pages. With page size 1 that is `last_page_len = 1` for a non-empty segment and `0` for an
empty one (no pages, length 0). raggedkv gives an empty segment's query heads zeros; FlashInfer's output for a
zero-length request is FlashInfer's to define, so an embedder who may see empty segments should check it.

The ragged layout (`BatchPrefillWithRaggedKVCacheWrapper`) wants each request's keys contiguous and back to back;
segments have free headroom between them, so the ragged K/V are the valid rows compacted with
`gather_ragged_kv` (a copy), and the ragged `kv_indptr` is `paged_kv_indptr` (one token per page). Its
`qo_indptr` is `arange(num_segments + 1)`: one query token per request at decode.

`kv_lens` is clamped to `[0, capacity]` exactly as the kernels do, so the metadata never reaches a row outside a
segment. As for the kernels, `kv_indptr` non-decreasing and inside the buffer is the caller's side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._utils import INDEX_DTYPES, check_tensor
from .reference import _segment_bounds


@dataclass(frozen=True, slots=True)
class FlashInferLayout:
    """FlashInfer metadata for one raggedkv layer, every tensor int32 on `kv_indptr`'s device.

    paged_kv_indptr: `[num_segments + 1]` cumulative valid lengths, from 0 (also the ragged layout's `kv_indptr`).
    paged_kv_indices: `[num_indices]` cache row of every valid token, segment after segment in row order (the page
        ids with page size 1); entries past `paged_kv_indptr[-1]` are filler 0 and never read by FlashInfer.
    paged_kv_last_page_len: `[num_segments]` 1 for a non-empty segment, 0 for an empty one.
    qo_indptr: `[num_segments + 1]` `arange`: one query token per request (the ragged/prefill wrappers' argument).
    """

    paged_kv_indptr: torch.Tensor
    paged_kv_indices: torch.Tensor
    paged_kv_last_page_len: torch.Tensor
    qo_indptr: torch.Tensor

    @property
    def ragged_kv_indptr(self) -> torch.Tensor:
        """`[num_segments + 1]` ragged-layout `kv_indptr` over the K/V compacted by `gather_ragged_kv`."""
        return self.paged_kv_indptr


def flashinfer_layout(
    kv_indptr: torch.Tensor, kv_lens: torch.Tensor, *, num_indices: int | None = None
) -> FlashInferLayout:
    """Convert raggedkv segments to FlashInfer's page-size-1 metadata, each segment a request. Vectorised.

    Args:
        kv_indptr: `[num_segments + 1]` int32/int64 row offsets into `k_cache`/`v_cache`.
        kv_lens: `[num_segments]` int32/int64 valid rows, clamped to `[0, capacity]` as the kernels do.
        num_indices: length of `paged_kv_indices`. Default `None`: exactly the number of valid tokens, which
            reads that count on the host (one device-to-host copy: a sync on a GPU). Pass a host int to avoid the
            sync and get a fixed shape (CUDA graphs, FlashInfer's `use_cuda_graph` buffers):
            `kv_indptr[-1] - kv_indptr[0]` (the rows the segments own, e.g. `SegmentPlan.total_slots`) always
            suffices. Were it too small, the trailing tokens would be cut (lengths shortened, every index still
            inside the array), never read out of bounds.

    Returns:
        A `FlashInferLayout` (int32 tensors on `kv_indptr`'s device).

    Raises:
        TypeError / ValueError: a bad dtype, rank or device, mismatched lengths or a negative or too large
            `num_indices`, naming the argument.
    """
    check_tensor("kv_indptr", kv_indptr, ndim=1, dtypes=INDEX_DTYPES)
    check_tensor("kv_lens", kv_lens, ndim=1, dtypes=INDEX_DTYPES, device=kv_indptr.device)
    if kv_indptr.numel() != kv_lens.numel() + 1:
        raise ValueError(
            f"kv_indptr has {kv_indptr.numel()} entries but kv_lens has {kv_lens.numel()}: kv_indptr needs "
            "num_segments + 1"
        )
    if num_indices is not None and not 0 <= num_indices < 2**31:
        raise ValueError(f"num_indices={num_indices} must be in [0, 2**31) (FlashInfer's indices are int32)")
    device = kv_indptr.device
    start, _, length = _segment_bounds(kv_indptr, kv_lens)
    ends = torch.cumsum(length, dim=0)  # [S] int64
    if num_indices is None:
        num_indices = int(ends[-1]) if ends.numel() else 0  # the one host read
    firsts = (ends - length).clamp_max(num_indices)  # where each segment's tokens begin among the indices
    ends = ends.clamp_max(num_indices)
    token = torch.arange(num_indices, device=device)
    owner = torch.searchsorted(ends, token, right=True)  # [N] segment of each token; == S for filler
    valid = owner < ends.numel()
    owner = owner.clamp_max(max(ends.numel() - 1, 0))
    rows = start[owner] + token - firsts[owner] if ends.numel() else token
    indptr = torch.cat([ends.new_zeros(1), ends])
    return FlashInferLayout(
        paged_kv_indptr=indptr.to(torch.int32),
        paged_kv_indices=torch.where(valid, rows, 0).to(torch.int32),
        paged_kv_last_page_len=(indptr[1:] > indptr[:-1]).to(torch.int32),
        qo_indptr=torch.arange(kv_lens.numel() + 1, dtype=torch.int32, device=device),
    )


def paged_kv_view(cache: torch.Tensor) -> torch.Tensor:
    """`[total_slots, head_dim]` cache -> FlashInfer NHD pages `[total_slots, 1, 1, head_dim]` (a view, no copy)."""
    check_tensor("cache", cache, ndim=2)
    return cache.view(cache.shape[0], 1, 1, cache.shape[1])


def gather_ragged_kv(cache: torch.Tensor, layout: FlashInferLayout) -> torch.Tensor:
    """The valid rows compacted for FlashInfer's ragged layout: `[num_indices, 1, head_dim]` (num_kv_heads=1), a
    copy; request `s` owns rows `layout.ragged_kv_indptr[s] .. [s + 1]`."""
    check_tensor("cache", cache, ndim=2)
    return cache.index_select(0, layout.paged_kv_indices.to(torch.int64))[:, None, :]


def group_queries(q: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """`[batch, num_qo_heads, head_dim]` -> `[batch * num_kv_heads, group_size, head_dim]`: request `s`'s qo heads
    (a view when `q` is contiguous). Reshape FlashInfer's output back with `.reshape(q.shape)`."""
    check_tensor("q", q, ndim=3)
    if num_kv_heads < 1 or q.shape[1] % num_kv_heads:
        raise ValueError(f"num_kv_heads={num_kv_heads} must be >= 1 and divide num_qo_heads={q.shape[1]}")
    return q.reshape(q.shape[0] * num_kv_heads, q.shape[1] // num_kv_heads, q.shape[2])
