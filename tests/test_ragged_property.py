"""Property test: random ragged layouts, a run of appends (some past capacity), then decode, against the references."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raggedkv.kernels.append import append_kv
from raggedkv.kernels.decode import ragged_decode_attention
from raggedkv.kernels.reference import append_kv_ref

from tests.ragged_cases import expected_output, forbid_host_sync, make_case, output_tolerance
from tests.utils import assert_close


@st.composite
def ragged_layouts(draw):
    """Shapes, per-segment lengths (<= 1.8K tokens in all), headroom, appends, chunk plan and dtype."""
    batch = draw(st.integers(1, 3))
    num_kv_heads = draw(st.integers(1, 3))
    return dict(
        batch=batch,
        group=draw(st.sampled_from([1, 2, 3, 4])),
        head_dim=draw(st.sampled_from([16, 64, 80, 128])),
        lens=draw(st.lists(st.integers(0, 200), min_size=batch * num_kv_heads, max_size=batch * num_kv_heads)),
        headroom=draw(st.integers(0, 4)),
        appends=draw(st.integers(0, 5)),
        chunk_size=draw(st.sampled_from([16, 24, 64, 256])),
        extra_chunks=draw(st.integers(0, 2)),
        dtype=draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=ragged_layouts())
def test_appends_then_decode_match_reference(device, layout):
    torch.manual_seed(layout["seed"])
    dtype, head_dim = layout["dtype"], layout["head_dim"]
    q, k_cache, v_cache, plan = make_case(layout["lens"], layout["batch"], layout["group"], head_dim, dtype, device,
                                          headroom=layout["headroom"])
    expected_k, expected_v, expected_lens = k_cache.clone(), v_cache.clone(), plan.kv_lens.clone()
    for _ in range(layout["appends"]):
        k_new = torch.randn(len(layout["lens"]), head_dim, device=device).to(dtype)
        v_new = torch.randn_like(k_new)
        append_kv_ref(k_new, v_new, expected_k, expected_v, plan.kv_indptr, expected_lens)
        append_kv(k_new, v_new, k_cache, v_cache, plan.kv_indptr, plan.kv_lens)
    assert torch.equal(plan.kv_lens, expected_lens)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)

    chunk_size = layout["chunk_size"]
    max_chunks = -(-int(plan.capacities.max()) // chunk_size) + layout["extra_chunks"]
    with forbid_host_sync():
        out = ragged_decode_attention(q, k_cache, v_cache, plan.kv_indptr, plan.kv_lens, chunk_size=chunk_size,
                                      max_chunks=max(1, max_chunks))
    assert_close(out, expected_output(q, k_cache, v_cache, plan), output_tolerance(dtype))
