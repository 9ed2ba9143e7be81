"""append_kv vs append_kv_ref on sentinel-filled caches: exact rows, lengths, untouched rows, capacity, no sync."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from raggedkv.kernels.append import _append_kv_launches, append_kv
from raggedkv.kernels.reference import append_kv_ref

from tests.ragged_cases import dtype_id, expected_output, forbid_host_sync, make_case, run_decode, valid_rows
from tests.utils import SENTINEL, TOLERANCE, assert_close


def append_both(k_new, v_new, k_cache, v_cache, plan):
    """Run the kernel on the caches/lengths in place and the reference on copies; return the copies."""
    expected_k, expected_v, expected_lens = k_cache.clone(), v_cache.clone(), plan.kv_lens.clone()
    append_kv_ref(k_new, v_new, expected_k, expected_v, plan.kv_indptr, expected_lens)
    append_kv(k_new, v_new, k_cache, v_cache, plan.kv_indptr, plan.kv_lens)
    return expected_k, expected_v, expected_lens


def assert_only_valid_rows_written(cache: torch.Tensor, plan) -> None:
    """Every row outside the valid prefix of its segment (headroom, gaps) still holds the sentinel."""
    untouched = torch.ones(cache.shape[0], dtype=torch.bool)
    untouched[valid_rows(plan)] = False
    assert torch.all(cache[untouched.to(cache.device)] == SENTINEL), "a row outside the valid segments changed"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_append_matches_reference(device, dtype, head_dim):
    """Segments empty, partly full and at capacity: rows, lengths and everything else as the reference."""
    lens = [0, 1, 5, 2, 0, 9]
    _, k_cache, v_cache, plan = make_case(lens, 2, 1, head_dim, dtype, device, headroom=2)
    plan.kv_lens[3] = plan.capacities[3]  # at capacity: rows 0..1 were sentinel, now "valid"; must stay as is
    k_new = torch.randn(len(lens), head_dim, device=device).to(dtype)
    v_new = torch.randn_like(k_new)
    expected_k, expected_v, expected_lens = append_both(k_new, v_new, k_cache, v_cache, plan)
    assert torch.equal(plan.kv_lens, expected_lens)
    assert torch.equal(plan.kv_lens.cpu(), torch.tensor([1, 2, 6, 4, 1, 10], dtype=torch.int32))
    assert torch.equal(k_cache, expected_k)
    assert torch.equal(v_cache, expected_v)
    for cache in (k_cache, v_cache):
        assert_only_valid_rows_written(cache, plan)


def test_append_until_full_then_noop(device):
    """Repeated appends fill the headroom exactly; further appends change nothing."""
    headroom = 3
    _, k_cache, v_cache, plan = make_case([4, 0, 7], 1, 1, 64, torch.bfloat16, device, headroom=headroom)
    for _ in range(headroom + 2):
        k_new = torch.randn(3, 64, device=device).to(torch.bfloat16)
        expected_k, expected_v, expected_lens = append_both(k_new, -k_new, k_cache, v_cache, plan)
        assert torch.equal(plan.kv_lens, expected_lens)
        assert torch.equal(k_cache, expected_k)
        assert torch.equal(v_cache, expected_v)
    assert torch.equal(plan.kv_lens, plan.capacities)
    full_k, full_v = k_cache.clone(), v_cache.clone()
    append_kv(torch.ones(3, 64, device=device), torch.ones(3, 64, device=device), k_cache, v_cache,
              plan.kv_indptr, plan.kv_lens)
    assert torch.equal(k_cache, full_k) and torch.equal(v_cache, full_v)
    assert torch.equal(plan.kv_lens, plan.capacities)


def test_append_strided_rows_and_dtype_cast(device):
    """k_new/v_new as strided row views (e.g. slices of a fused QKV buffer), fp32 stored into an fp16 cache."""
    _, k_cache, v_cache, plan = make_case([2, 0, 5, 1], 2, 1, 64, torch.float16, device)
    fused = torch.randn(4, 3, 64, device=device)
    k_new, v_new = fused[:, 1], fused[:, 2]
    assert k_new.stride(0) == 3 * 64
    expected_k, expected_v, expected_lens = append_both(k_new, v_new, k_cache, v_cache, plan)
    assert torch.equal(plan.kv_lens, expected_lens)
    assert_close(k_cache, expected_k, torch.finfo(torch.float16).eps, "k_cache")
    assert_close(v_cache, expected_v, torch.finfo(torch.float16).eps, "v_cache")
    for cache in (k_cache, v_cache):
        assert_only_valid_rows_written(cache, plan)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
def test_append_then_decode_equals_attention_over_concatenation(device, dtype):
    """After append_kv, decode equals plain attention over [old valid rows; new row] of every segment."""
    lens, batch, group, head_dim = [0, 3, 33, 64, 65, 7], 2, 3, 64
    q, k_cache, v_cache, plan = make_case(lens, batch, group, head_dim, dtype, device)
    old_k, old_v = k_cache.clone(), v_cache.clone()
    k_new = torch.randn(len(lens), head_dim, device=device).to(dtype)
    v_new = torch.randn_like(k_new)
    append_kv(k_new, v_new, k_cache, v_cache, plan.kv_indptr, plan.kv_lens)
    out = run_decode(q, k_cache, v_cache, plan, 32)

    expected = torch.empty(q.shape, dtype=torch.float64)
    starts = plan.kv_indptr.tolist()
    for seg, length in enumerate(lens):
        rows = slice(starts[seg], starts[seg] + length)
        keys = torch.cat([old_k[rows], k_new[seg : seg + 1]]).double().cpu()
        values = torch.cat([old_v[rows], v_new[seg : seg + 1]]).double().cpu()
        b, h = divmod(seg, len(lens) // batch)
        queries = q[b, h * group : (h + 1) * group].double().cpu()
        expected[b, h * group : (h + 1) * group] = F.scaled_dot_product_attention(queries, keys, values)
    assert_close(out, expected, TOLERANCE[dtype] + torch.finfo(dtype).eps)
    assert_close(out, expected_output(q, k_cache, v_cache, plan), TOLERANCE[dtype] + torch.finfo(dtype).eps)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=dtype_id)
def test_append_accepts_int32_and_int64_metadata(device, index_dtype):
    """kv_indptr and kv_lens in either index dtype (each its own): same rows as the reference, dtype kept."""
    _, k_cache, v_cache, plan = make_case([2, 0, 5, 1], 2, 1, 64, torch.float32, device, headroom=1)
    kv_indptr, kv_lens = plan.kv_indptr.to(index_dtype), plan.kv_lens.long()
    kv_lens[2] = 6  # at capacity
    expected_k, expected_v, expected_lens = k_cache.clone(), v_cache.clone(), kv_lens.clone()
    k_new = torch.randn(4, 64, device=device)
    append_kv_ref(k_new, -k_new, expected_k, expected_v, kv_indptr, expected_lens)
    append_kv(k_new, -k_new, k_cache, v_cache, kv_indptr, kv_lens)
    assert kv_lens.dtype == torch.int64 and kv_lens.tolist() == expected_lens.tolist() == [3, 1, 6, 2]
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)


def test_append_launch_description_from_meta_tensors():
    """`_append_kv_launches` needs shapes only: on meta tensors it describes the launcher's one launch."""
    meta = {"device": "meta"}
    k_new, k_cache = torch.empty(6, 3, 80, **meta)[:, 1], torch.empty(100, 80, dtype=torch.float16, **meta)
    kv_indptr, kv_lens = torch.empty(7, dtype=torch.int64, **meta), torch.empty(6, dtype=torch.int32, **meta)
    (launch,) = _append_kv_launches(k_new, k_new, k_cache, k_cache, kv_indptr, kv_lens)
    assert launch.name == "_append_kv_kernel" and launch.grid == (6,)
    assert dict(launch.constexprs) == {"HEAD_DIM": 80, "BLOCK_D": 128}
    assert launch.args[6:] == (240, 240, 100)  # row strides of k_new/v_new, cache rows


def test_append_does_not_sync(device):
    _, k_cache, v_cache, plan = make_case([2, 0, 5, 1], 2, 1, 64, torch.float32, device)
    k_new = torch.randn(4, 64, device=device)
    with forbid_host_sync():
        append_kv(k_new, k_new, k_cache, v_cache, plan.kv_indptr, plan.kv_lens)
    assert torch.equal(plan.kv_lens.cpu(), torch.tensor([3, 1, 6, 2], dtype=torch.int32))


def _bad_append_args(name):
    """Mutations of a valid call that must fail naming `name`."""
    return {
        "k_new": [
            lambda a: a.update(k_new=a["k_new"].tolist()),
            lambda a: a.update(k_new=a["k_new"][:-1]),
            lambda a: a.update(k_new=a["k_new"][:, :8]),
            lambda a: a.update(k_new=a["k_new"].to(torch.int32)),
            lambda a: a.update(k_new=a["k_new"].t().contiguous().t()),
        ],
        "v_new": [lambda a: a.update(v_new=a["v_new"][None]), lambda a: a.update(v_new=a["v_new"].to("meta"))],
        "k_cache": [lambda a: a.update(k_cache=a["k_cache"].t().contiguous().t())],
        "v_cache": [
            lambda a: a.update(v_cache=a["v_cache"].double()),
            lambda a: a.update(v_cache=a["v_cache"][1:]),
        ],
        "kv_indptr": [
            lambda a: a.update(kv_indptr=a["kv_indptr"][1:]),
            lambda a: a.update(kv_indptr=a["kv_indptr"].float()),
        ],
        "kv_lens": [
            lambda a: a.update(kv_lens=a["kv_lens"].to(torch.int16)),
            lambda a: a.update(kv_lens=a["kv_lens"].float()),
            lambda a: a.update(kv_lens=a["kv_lens"][None]),
        ],
    }[name]


@pytest.mark.parametrize("name", ["k_new", "v_new", "k_cache", "v_cache", "kv_indptr", "kv_lens"])
def test_append_bad_arguments_are_named(device, name):
    _, k_cache, v_cache, plan = make_case([2, 0, 5, 1], 2, 1, 16, torch.float32, device)
    for mutate in _bad_append_args(name):
        args = dict(k_new=torch.randn(4, 16, device=device), v_new=torch.randn(4, 16, device=device),
                    k_cache=k_cache, v_cache=v_cache, kv_indptr=plan.kv_indptr, kv_lens=plan.kv_lens)
        mutate(args)
        with pytest.raises((TypeError, ValueError), match=name):
            append_kv(**args)
