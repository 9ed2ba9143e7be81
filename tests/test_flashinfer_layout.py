"""`flashinfer_layout`: raggedkv segments -> FlashInfer page-size-1 metadata, checked against a plain gather and
against the decode reference through a pure-torch paged (and ragged) attention driven by the converted metadata."""

from __future__ import annotations

import math

import pytest
import torch
from raggedkv.kernels import flashinfer_layout, ragged_decode_attention_ref
from raggedkv.kernels.flashinfer_layout import gather_ragged_kv, group_queries, paged_kv_view

from tests.ragged_cases import forbid_host_sync


def random_segments(batch: int, num_kv_heads: int, *, index_dtype: torch.dtype = torch.int32):
    """Random ragged segments with free headroom and gaps: lengths 0, 1, full and one long among short ones.

    Returns `(kv_indptr, kv_lens, total_slots)`; the first segment starts past row 0 (a shared buffer)."""
    num_segments = batch * num_kv_heads
    capacity = torch.randint(1, 9, (num_segments,))
    capacity[torch.randint(num_segments, ())] = 57  # one long segment among short ones
    choice = torch.randint(0, 4, (num_segments,))
    lens = torch.where(choice == 0, 0, torch.where(choice == 1, 1, torch.where(choice == 2, capacity,
                                                                               torch.randint(0, 9, (num_segments,)))))
    lens = torch.minimum(lens, capacity)
    lens[torch.randint(num_segments, ())] = capacity.max()  # the long segment, or a full one
    kv_indptr = torch.zeros(num_segments + 1, dtype=torch.int64)
    kv_indptr[1:] = capacity.cumsum(0)
    kv_indptr += 3
    return kv_indptr.to(index_dtype), lens.to(index_dtype), int(kv_indptr[-1]) + 2


def loop_rows(kv_indptr: torch.Tensor, kv_lens: torch.Tensor) -> list[torch.Tensor]:
    """Each segment's valid rows, one segment at a time, lengths clamped to `[0, capacity]` (the contract)."""
    rows = []
    for s in range(kv_lens.numel()):
        start, end = int(kv_indptr[s]), int(kv_indptr[s + 1])
        length = min(max(int(kv_lens[s]), 0), max(end - start, 0))
        rows.append(torch.arange(start, start + length))
    return rows


def paged_decode_reference(q_requests, k_pages, v_pages, indptr, indices, last_page_len, page_size=1):
    """Paged decode attention, one request at a time, read the way FlashInfer reads its metadata.

    q_requests: `[num_requests, num_qo_heads, D]`; k_pages/v_pages: `[num_pages, page_size, 1, D]` (NHD,
    num_kv_heads=1). A request's length is `max(num_pages - 1, 0) * page_size + last_page_len`; an empty request
    gives zeros (raggedkv's convention)."""
    out = torch.zeros_like(q_requests)
    scale = 1.0 / math.sqrt(q_requests.shape[-1])
    for r in range(q_requests.shape[0]):
        pages = indices[int(indptr[r]): int(indptr[r + 1])].long()
        length = max(pages.numel() - 1, 0) * page_size + int(last_page_len[r])
        keys = k_pages[pages].reshape(-1, k_pages.shape[-1])[:length]  # [length, D]
        values = v_pages[pages].reshape(-1, v_pages.shape[-1])[:length]
        if length:
            out[r] = torch.softmax(q_requests[r] @ keys.T * scale, dim=-1) @ values
    return out


def ragged_decode_reference(q_requests, k_ragged, v_ragged, kv_indptr):
    """Ragged decode attention: request `r` attends to rows `kv_indptr[r] .. kv_indptr[r + 1]` of the compacted
    `[nnz, 1, D]` K/V."""
    out = torch.zeros_like(q_requests)
    scale = 1.0 / math.sqrt(q_requests.shape[-1])
    for r in range(q_requests.shape[0]):
        keys = k_ragged[int(kv_indptr[r]): int(kv_indptr[r + 1]), 0]
        values = v_ragged[int(kv_indptr[r]): int(kv_indptr[r + 1]), 0]
        if keys.shape[0]:
            out[r] = torch.softmax(q_requests[r] @ keys.T * scale, dim=-1) @ values
    return out


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("batch,num_kv_heads", [(1, 1), (3, 2), (2, 4)])
def test_indices_select_the_rows_a_loop_over_segments_selects(batch, num_kv_heads, index_dtype):
    kv_indptr, kv_lens, total_slots = random_segments(batch, num_kv_heads, index_dtype=index_dtype)
    k_cache = torch.randn(total_slots, 16)
    layout = flashinfer_layout(kv_indptr, kv_lens)
    expected = loop_rows(kv_indptr, kv_lens)

    lengths = torch.tensor([rows.numel() for rows in expected])
    assert layout.paged_kv_indptr.tolist() == [0, *lengths.cumsum(0).tolist()]
    assert layout.paged_kv_last_page_len.tolist() == (lengths > 0).int().tolist()
    assert layout.qo_indptr.tolist() == list(range(batch * num_kv_heads + 1))
    for t in (layout.paged_kv_indptr, layout.paged_kv_indices, layout.paged_kv_last_page_len, layout.qo_indptr):
        assert t.dtype == torch.int32
    indices = layout.paged_kv_indices.long()
    for s, rows in enumerate(expected):
        segment_indices = indices[layout.paged_kv_indptr[s]: layout.paged_kv_indptr[s + 1]]
        torch.testing.assert_close(k_cache[segment_indices], k_cache[rows], rtol=0, atol=0)
    torch.testing.assert_close(gather_ragged_kv(k_cache, layout)[:, 0], k_cache[torch.cat(expected)], rtol=0, atol=0)


def test_corrupted_lengths_are_clamped_like_the_kernels():
    kv_indptr = torch.tensor([2, 6, 6, 9, 15], dtype=torch.int32)  # capacities 4, 0, 3, 6
    kv_lens = torch.tensor([-5, 7, 99, 2], dtype=torch.int64)  # -> 0, 0, 3, 2
    layout = flashinfer_layout(kv_indptr, kv_lens)
    assert layout.paged_kv_indptr.tolist() == [0, 0, 0, 3, 5]
    assert layout.paged_kv_indices.tolist() == [6, 7, 8, 9, 10]
    assert layout.paged_kv_last_page_len.tolist() == [0, 0, 1, 1]


def test_num_indices_gives_a_fixed_shape_without_a_host_sync():
    kv_indptr, kv_lens, _ = random_segments(3, 2)
    exact = flashinfer_layout(kv_indptr, kv_lens)
    total = int(kv_indptr[-1] - kv_indptr[0])
    with forbid_host_sync():
        padded = flashinfer_layout(kv_indptr, kv_lens, num_indices=total)
    assert padded.paged_kv_indices.shape == (total,)
    nnz = exact.paged_kv_indices.numel()
    torch.testing.assert_close(padded.paged_kv_indices[:nnz], exact.paged_kv_indices, rtol=0, atol=0)
    assert (padded.paged_kv_indices[nnz:] == 0).all()
    torch.testing.assert_close(padded.paged_kv_indptr, exact.paged_kv_indptr, rtol=0, atol=0)
    torch.testing.assert_close(padded.paged_kv_last_page_len, exact.paged_kv_last_page_len, rtol=0, atol=0)


def test_too_small_num_indices_cuts_trailing_tokens_inside_the_array():
    kv_indptr = torch.tensor([0, 4, 8, 12])
    kv_lens = torch.tensor([3, 4, 2])
    layout = flashinfer_layout(kv_indptr, kv_lens, num_indices=5)
    assert layout.paged_kv_indptr.tolist() == [0, 3, 5, 5]
    assert layout.paged_kv_indices.tolist() == [0, 1, 2, 4, 5]
    assert layout.paged_kv_last_page_len.tolist() == [1, 1, 0]


@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("batch,num_kv_heads", [(1, 2), (3, 2), (2, 1)])
def test_paged_and_ragged_attention_on_the_metadata_equal_the_decode_reference(batch, num_kv_heads, group):
    kv_indptr, kv_lens, total_slots = random_segments(batch, num_kv_heads, index_dtype=torch.int64)
    head_dim = 8
    q = torch.randn(batch, num_kv_heads * group, head_dim, dtype=torch.float64)
    k_cache = torch.randn(total_slots, head_dim, dtype=torch.float64)
    v_cache = torch.randn(total_slots, head_dim, dtype=torch.float64)
    kv_lens[0] = -3  # corrupted: clamped to 0 by both sides
    layout = flashinfer_layout(kv_indptr, kv_lens, num_indices=total_slots)
    expected = ragged_decode_attention_ref(q, k_cache, v_cache, kv_indptr, kv_lens)

    q_requests = group_queries(q, num_kv_heads)
    paged = paged_decode_reference(q_requests, paged_kv_view(k_cache), paged_kv_view(v_cache),
                                   layout.paged_kv_indptr, layout.paged_kv_indices, layout.paged_kv_last_page_len)
    torch.testing.assert_close(paged.reshape(q.shape), expected, rtol=1e-12, atol=1e-12)
    ragged = ragged_decode_reference(q_requests, gather_ragged_kv(k_cache, layout), gather_ragged_kv(v_cache, layout),
                                     layout.ragged_kv_indptr)
    torch.testing.assert_close(ragged.reshape(q.shape), expected, rtol=1e-12, atol=1e-12)


def test_bad_arguments_are_named():
    kv_indptr = torch.tensor([0, 2, 4])
    with pytest.raises(ValueError, match="kv_indptr has 3 entries but kv_lens has 3"):
        flashinfer_layout(kv_indptr, torch.tensor([1, 1, 1]))
    with pytest.raises(TypeError, match="kv_lens has dtype float32"):
        flashinfer_layout(kv_indptr, torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="num_indices=-1"):
        flashinfer_layout(kv_indptr, torch.tensor([1, 1]), num_indices=-1)
    with pytest.raises(ValueError, match="num_kv_heads=3 must be >= 1 and divide num_qo_heads=4"):
        group_queries(torch.randn(2, 4, 8), 3)
