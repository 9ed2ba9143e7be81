"""RaggedKVCache: one allocation, region layout, pack/append within segments, byte accounting, reset."""

from __future__ import annotations

import pytest
import torch

from raggedkv.engine.backend import TORCH_BACKEND
from raggedkv.engine.cache import RaggedKVCache
from tests.utils import SENTINEL

HEADS, DIM, HEADROOM = 2, 8, 3


def _cache(layer_totals: list[list[int]], prompt_lens: list[int], dtype=torch.float32) -> RaggedKVCache:
    return RaggedKVCache(
        torch.tensor(layer_totals), prompt_lens, num_kv_heads=HEADS, head_dim=DIM, headroom=HEADROOM, dtype=dtype,
        device=torch.device("cpu"), backend=TORCH_BACKEND,
    )


def _pack(cache: RaggedKVCache, layer: int, seq: int, budgets: list[int], n: int, window: int):
    k = torch.randn(HEADS, n, DIM)
    v = torch.randn(HEADS, n, DIM)
    scores = torch.rand(HEADS, n - window)
    cache.pack(layer, seq, torch.tensor(budgets), scores, k, v)
    return k, v, scores


def test_one_allocation_and_region_layout():
    cache = _cache([[10, 6], [4, 12]], [10, 12])  # [layers, batch]
    region = [[10 + HEADS * HEADROOM, 6 + HEADS * HEADROOM], [4 + HEADS * HEADROOM, 12 + HEADS * HEADROOM]]
    assert cache.kv.shape == (2, sum(map(sum, region)), DIM)
    assert cache.layer_rows == [sum(region[0]), sum(region[1])]
    assert cache.region_start.tolist() == [[0, region[0][0]], [0, region[1][0]]]
    layer1 = cache.layer(1)
    assert layer1.k_cache.data_ptr() == cache.kv[0, cache.layer_rows[0]].data_ptr()  # views, not copies
    assert layer1.v_cache.data_ptr() == cache.kv[1, cache.layer_rows[0]].data_ptr()
    assert layer1.kv_indptr.shape == (2 * HEADS + 1,) and layer1.kv_lens.shape == (2 * HEADS,)


def test_pack_keeps_top_tokens_and_window_and_writes_nothing_else():
    cache = _cache([[9, 7]], [6, 7])
    cache.kv.fill_(SENTINEL)
    n1, w = 7, 2
    k, v, scores = _pack(cache, 0, 1, [3, 4], n1, w)  # seq 1 first: regions are independent
    layer = cache.layer(0)
    start = int(cache.region_start[0, 1])
    assert layer.kv_indptr[2:].tolist() == [start, start + 3 + HEADROOM, start + 7 + 2 * HEADROOM]
    assert layer.kv_lens[2:].tolist() == [3, 4]
    for head, budget in enumerate([3, 4]):
        kept = scores[head].topk(budget - w).indices.sort().values.tolist() + [n1 - 2, n1 - 1]
        rows = slice(int(layer.kv_indptr[2 + head]), int(layer.kv_indptr[2 + head]) + budget)
        torch.testing.assert_close(layer.k_cache[rows], k[head, kept], rtol=0, atol=0)
        torch.testing.assert_close(layer.v_cache[rows], v[head, kept], rtol=0, atol=0)
    written = torch.zeros(cache.kv.shape[1], dtype=torch.bool)
    for s in (2, 3):
        written[int(layer.kv_indptr[s]) : int(layer.kv_indptr[s]) + int(layer.kv_lens[s])] = True
    assert (cache.kv[:, ~written] == SENTINEL).all()


def test_append_fills_headroom_then_changes_nothing_and_keeps_host_state():
    cache = _cache([[4], [6]], [4])
    _pack(cache, 0, 0, [2, 2], 4, 2)
    for _ in range(HEADROOM):
        cache.append(0, torch.ones(HEADS, DIM), torch.ones(HEADS, DIM))
    layer = cache.layer(0)
    assert layer.kv_lens.tolist() == [2 + HEADROOM] * HEADS
    assert (layer.k_cache[int(layer.kv_indptr[1]) - 1] == 1).all()  # last row of segment 0
    before = cache.kv.clone()
    cache.append(0, torch.full((HEADS, DIM), 2.0), torch.full((HEADS, DIM), 2.0))  # past the headroom
    assert torch.equal(cache.kv, before) and layer.kv_lens.tolist() == [2 + HEADROOM] * HEADS
    assert cache.decode_steps == 0  # the runner counts steps and guards the headroom, not append


def test_pack_rejects_budgets_that_change_the_layer_total():
    cache = _cache([[8]], [8])
    with pytest.raises(ValueError, match="budgets sum to 7"):
        _pack(cache, 0, 0, [3, 4], 8, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_byte_accounting(dtype):
    prompt_lens = [20, 9]
    cache = _cache([[10, 9], [6, 9]], prompt_lens, dtype=dtype)
    row = 2 * DIM * torch.tensor([], dtype=dtype).element_size()
    _pack(cache, 0, 0, [6, 4], 20, 2)
    _pack(cache, 0, 1, [4, 5], 9, 2)
    _pack(cache, 1, 0, [3, 3], 20, 2)
    _pack(cache, 1, 1, [5, 4], 9, 2)
    memory = cache.memory()
    assert memory.valid.tolist() == [[10 * row, 9 * row], [6 * row, 9 * row]]
    assert memory.full.tolist() == [[20 * HEADS * row, 9 * HEADS * row]] * 2
    assert memory.allocated.tolist() == [
        [(10 + HEADS * HEADROOM) * row, (9 + HEADS * HEADROOM) * row],
        [(6 + HEADS * HEADROOM) * row, (9 + HEADS * HEADROOM) * row],
    ]
    assert memory.total()["allocated"] == cache.kv.numel() * cache.kv.element_size()
    assert memory.per_layer()["valid"] == [19 * row, 15 * row]
    assert memory.total()["full"] == 2 * 29 * HEADS * row
    for layer in (0, 1):
        cache.append(layer, torch.zeros(2 * HEADS, DIM), torch.zeros(2 * HEADS, DIM))
    cache.decode_steps += 1  # what the runner does after a step
    memory = cache.memory()
    assert memory.valid.tolist() == [[12 * row, 11 * row], [8 * row, 11 * row]]
    assert memory.full.tolist() == [[21 * HEADS * row, 10 * HEADS * row]] * 2


def test_reset_empties_segments_and_keeps_layout():
    cache = _cache([[4]], [4])
    _pack(cache, 0, 0, [2, 2], 4, 2)
    cache.append(0, torch.ones(HEADS, DIM), torch.ones(HEADS, DIM))
    cache.decode_steps += 1
    indptr = cache.kv_indptr.clone()
    cache.reset()
    assert cache.kv_lens.eq(0).all() and cache.decode_steps == 0 and torch.equal(cache.kv_indptr, indptr)
    assert int(cache.memory().valid.sum()) == 0


def test_pack_with_a_reserve_lays_segments_at_the_start_and_kernels_read_only_them():
    """A reserved region (tensor parallelism): budgets summing below the reserve fill the front of the region; the
    spare rows stay untouched, kv_lens/capacities describe the real segments, and decode attention (the torch
    reference and the Triton kernel) reads only them: NaN in the spare rows changes nothing."""
    from raggedkv.kernels import ragged_decode_attention

    reserve = [[9 + 5, 7 + 4]]
    cache = RaggedKVCache(torch.tensor([[9, 7]]), [7, 7], num_kv_heads=HEADS, head_dim=DIM, headroom=HEADROOM,
                          dtype=torch.float32, device=torch.device("cpu"), backend=TORCH_BACKEND,
                          reserve=torch.tensor(reserve))
    assert cache.region_rows.tolist() == [[14 + HEADS * HEADROOM, 11 + HEADS * HEADROOM]]
    cache.kv.fill_(float("nan"))
    budgets = {1: [6, 5], 0: [3, 4]}  # 11 of 11 reserved rows, then 7 of 14; seq 1 first
    packed = {seq: _pack(cache, 0, seq, b, 7, 2) for seq, b in budgets.items()}
    layer = cache.layer(0)
    starts = cache.region_start[0].tolist()
    assert layer.kv_indptr.tolist() == [starts[0], starts[0] + 3 + HEADROOM, starts[1],  # seq 0's spare in its last span
                                        starts[1] + 6 + HEADROOM, starts[1] + 11 + 2 * HEADROOM]
    assert layer.kv_lens.tolist() == [3, 4, 6, 5]
    assert cache.capacities[0].tolist() == [b + HEADROOM for seq in (0, 1) for b in budgets[seq]]
    written = torch.zeros(cache.kv.shape[1], dtype=torch.bool)
    for s in range(2 * HEADS):
        written[int(layer.kv_indptr[s]) : int(layer.kv_indptr[s]) + int(layer.kv_lens[s])] = True
    assert cache.kv[:, ~written].isnan().all() and not cache.kv[:, written].isnan().any()
    memory = cache.memory()
    assert memory.allocated.tolist() == [[(14 + 6) * cache.row_bytes, (11 + 6) * cache.row_bytes]]
    assert memory.valid.tolist() == [[7 * cache.row_bytes, 11 * cache.row_bytes]]

    q = torch.randn(2, 2 * HEADS, DIM)
    expected = torch.empty(2, 2 * HEADS, DIM, dtype=torch.float64)
    for seq in (0, 1):
        for qo in range(2 * HEADS):
            s = seq * HEADS + qo // 2
            rows = slice(int(layer.kv_indptr[s]), int(layer.kv_indptr[s]) + int(layer.kv_lens[s]))
            keys, values = layer.k_cache[rows].double(), layer.v_cache[rows].double()
            weights = torch.softmax(keys @ q[seq, qo].double() / DIM**0.5, dim=0)
            expected[seq, qo] = weights @ values
    for attend in (TORCH_BACKEND.ragged_decode_attention, ragged_decode_attention):
        out = attend(q, *layer)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


def test_pack_without_a_reserve_needs_the_exact_total_and_a_reserve_caps_it():
    with pytest.raises(ValueError, match="budgets sum to 9, but the cache reserved 8 rows"):
        _pack(_cache([[8]], [10]), 0, 0, [4, 5], 10, 2)
    reserved = RaggedKVCache(torch.tensor([[6]]), [10], num_kv_heads=HEADS, head_dim=DIM, headroom=HEADROOM,
                             dtype=torch.float32, device=torch.device("cpu"), backend=TORCH_BACKEND,
                             reserve=torch.tensor([[8]]))
    with pytest.raises(ValueError, match="budgets sum to 9, but the cache reserved 8 rows"):
        _pack(reserved, 0, 0, [4, 5], 10, 2)
    with pytest.raises(ValueError, match="every entry >= its layer total"):
        RaggedKVCache(torch.tensor([[6]]), [10], num_kv_heads=HEADS, head_dim=DIM, headroom=HEADROOM,
                      dtype=torch.float32, device=torch.device("cpu"), backend=TORCH_BACKEND,
                      reserve=torch.tensor([[5]]))
