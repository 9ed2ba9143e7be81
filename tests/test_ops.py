"""torch.library registration: opcheck on every op, and torch.compile(fullgraph=True) through them."""

from __future__ import annotations

import pytest
import torch

from raggedkv.kernels import ops, reference
from tests.utils import TOLERANCE, assert_close, random_lengths_plan, sentinel_cache

HEAD_DIM = 16
NUM_KV_HEADS = 2
GROUP = 2


def _decode_case(device: torch.device):
    lens = [5, 0, 17, 3]  # batch 2 x 2 KV heads
    plan = random_lengths_plan(lens, headroom=2, device=device)
    k_cache = torch.randn(plan.total_slots, HEAD_DIM, device=device)
    v_cache = torch.randn(plan.total_slots, HEAD_DIM, device=device)
    q = torch.randn(2, NUM_KV_HEADS * GROUP, HEAD_DIM, device=device)
    return q, k_cache, v_cache, plan


def _pack_case(device: torch.device):
    n, w = 12, 3
    q_win = torch.randn(NUM_KV_HEADS * GROUP, w, HEAD_DIM, device=device)
    k = torch.randn(NUM_KV_HEADS, n, HEAD_DIM, device=device)
    v = torch.randn(NUM_KV_HEADS, n, HEAD_DIM, device=device)
    budgets = torch.tensor([4, 1], dtype=torch.int32, device=device)
    plan = random_lengths_plan([0, 0], headroom=n, device=device)
    k_cache = sentinel_cache(plan.total_slots, HEAD_DIM, torch.float32, device)
    v_cache = sentinel_cache(plan.total_slots, HEAD_DIM, torch.float32, device)
    return q_win, k, v, budgets, k_cache, v_cache, plan


def test_window_scores_opcheck(device):
    q_win, k, *_ = _pack_case(device)
    torch.library.opcheck(ops.window_scores_op, (q_win, k, "sum", "max", "avg", 3, None, None))


def test_select_and_pack_opcheck(device):
    q_win, k, v, budgets, k_cache, v_cache, plan = _pack_case(device)
    scores = torch.randn(NUM_KV_HEADS, k.shape[1] - q_win.shape[1], device=device)
    torch.library.opcheck(
        ops.select_and_pack_op, (scores, budgets, k, v, k_cache, v_cache, plan.kv_indptr, plan.kv_lens, 0)
    )


def test_append_kv_opcheck(device):
    q, k_cache, v_cache, plan = _decode_case(device)
    k_new = torch.randn(plan.kv_lens.numel(), HEAD_DIM, device=device)
    v_new = torch.randn_like(k_new)
    torch.library.opcheck(ops.append_kv_op, (k_new, v_new, k_cache, v_cache, plan.kv_indptr, plan.kv_lens))


def test_ragged_decode_attention_opcheck(device):
    q, k_cache, v_cache, plan = _decode_case(device)
    torch.library.opcheck(
        ops.ragged_decode_attention_op, (q, k_cache, v_cache, plan.kv_indptr, plan.kv_lens, None, None, None)
    )


def test_ops_are_registered_under_raggedkv_namespace():
    for name in ("window_scores", "select_and_pack", "append_kv", "ragged_decode_attention"):
        assert hasattr(torch.ops.raggedkv, name), name


def test_compiled_decode_step_matches_reference(device):
    """Append + decode through the ops under torch.compile(fullgraph=True) equals the reference step."""
    q, k_cache, v_cache, plan = _decode_case(device)
    k_new = torch.randn(plan.kv_lens.numel(), HEAD_DIM, device=device)
    v_new = torch.randn_like(k_new)
    expected_k, expected_v, expected_lens = k_cache.clone(), v_cache.clone(), plan.kv_lens.clone()
    reference.append_kv_ref(k_new, v_new, expected_k, expected_v, plan.kv_indptr, expected_lens)
    expected = reference.ragged_decode_attention_ref(q, expected_k, expected_v, plan.kv_indptr, expected_lens)

    def step(q, k_new, v_new, k_cache, v_cache, kv_indptr, kv_lens):
        torch.ops.raggedkv.append_kv(k_new, v_new, k_cache, v_cache, kv_indptr, kv_lens)
        return torch.ops.raggedkv.ragged_decode_attention(q, k_cache, v_cache, kv_indptr, kv_lens)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out = compiled(q, k_new, v_new, k_cache, v_cache, plan.kv_indptr, plan.kv_lens)
    assert torch.equal(plan.kv_lens, expected_lens)
    assert_close(k_cache, expected_k, 0.0, "k_cache")
    assert_close(out, expected, TOLERANCE[torch.float32])


@pytest.mark.parametrize("window_reduce", ["sum", "mean"])
def test_compiled_window_scores_matches_reference(device, window_reduce):
    q_win, k, *_ = _pack_case(device)
    compiled = torch.compile(
        lambda q, k: torch.ops.raggedkv.window_scores(q, k, window_reduce, "mean", "max", 3), fullgraph=True,
        backend="aot_eager",
    )
    expected = reference.window_scores_ref(q_win.double(), k.double(), window_reduce=window_reduce, pool_size=3)
    assert_close(compiled(q_win, k), expected, TOLERANCE[torch.float32])
