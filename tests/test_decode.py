"""ragged_decode_attention vs the fp64 reference (and the reference vs SDPA), on sentinel-filled ragged caches.

Tolerances (`decode_tolerance`, relative to max|reference|), from the measured errors in
`raggedkv.kernels.decode_kernels`:
- fp32 caches (exact fp32 dots): 1e-5, the fp32 limit.
- fp16/bf16 caches, q of the same dtype: the logits are fp32-accurate (exact products, fp32 sums) and P is split
  into two halves (u^2 per weight): measured <= 3.8e-6, limit 1e-5; plus one ulp of the output dtype for the
  cast on store (the interpreter truncates fp32 -> bf16 instead of rounding to nearest).
- fp32 q on a half cache (fp32 output, no store rounding): q is split in two halves, leaving 2^-22 (fp16) or
  2^-16 (bf16) of q in the logits: measured 1.3e-6 / 2.5e-5 under the interpreter, limits 1e-5 / 1e-4. A single
  cast of P (measured 1.1e-4 on fp16) fails this test, so it guards the P split.
Coverage of the tensor-core path on the CPU: fp16 runs it under the interpreter as on a GPU; the interpreter's
bf16 arithmetic is wrong, so bf16 caches there take the same roundings through exact fp32 dots (`UPCAST_DOTS`),
and the bf16 tensor-core code itself is covered by the ahead-of-time compile (kernel report) and on a GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from raggedkv.kernels.decode import (
    _decode_launches,
    _pick_block_n,
    _pick_chunk_size,
    plan_decode,
    ragged_decode_attention,
)
from raggedkv.kernels.reference import ragged_decode_attention_ref

from tests.ragged_cases import (
    CHUNK,
    dtype_id,
    edge_lengths,
    expected_output,
    forbid_host_sync,
    make_case,
    run_decode,
    valid_rows,
)
from tests.utils import TOLERANCE, assert_close

HALF_COMPUTE_LIMIT = 1e-5  # fp16/bf16 caches with q of the same dtype (P split): measured <= 3.8e-6
FP32_QUERY_LIMIT = {torch.float16: 1e-5, torch.bfloat16: 1e-4}  # q split in two halves of the cache dtype


def decode_tolerance(cache_dtype: torch.dtype, q_dtype: torch.dtype | None = None) -> float:
    """Relative error limit of the kernel's output for this cache and query dtype (module docstring)."""
    q_dtype = q_dtype or cache_dtype
    if cache_dtype == torch.float32:
        compute = TOLERANCE[torch.float32]
    elif q_dtype == torch.float32:
        compute = FP32_QUERY_LIMIT[cache_dtype]
    else:
        compute = HALF_COMPUTE_LIMIT
    store = 0.0 if q_dtype == torch.float32 else torch.finfo(q_dtype).eps  # one ulp for the cast on store
    return compute + store


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 3, 4])
def test_decode_edge_lengths(device, dtype, head_dim, group):
    """Batch 3 x 3 KV heads with lengths 0, 1, BLOCK_N +- 1, CHUNK +- 1 and one long segment, in any order."""
    q, k_cache, v_cache, plan = make_case(edge_lengths(head_dim), 3, group, head_dim, dtype, device)
    out = run_decode(q, k_cache, v_cache, plan, CHUNK)
    assert out.dtype == dtype
    assert_close(out, expected_output(q, k_cache, v_cache, plan), decode_tolerance(dtype))


@pytest.mark.parametrize("batch, num_kv_heads", [(1, 1), (1, 4), (2, 2)])
def test_decode_batch_shapes(device, batch, num_kv_heads):
    """Random lengths per segment, batch 1-2; sequences of one batch differ in length."""
    lens = torch.randint(0, 300, (batch * num_kv_heads,)).tolist()
    q, k_cache, v_cache, plan = make_case(lens, batch, 2, 64, torch.float16, device)
    out = run_decode(q, k_cache, v_cache, plan, 64)
    assert_close(out, expected_output(q, k_cache, v_cache, plan), decode_tolerance(torch.float16))


@pytest.mark.parametrize("cache_dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
def test_decode_half_caches_fp32_query(device, cache_dtype):
    """With an fp32 query the output is fp32 (no store rounding): the split q and the split P are measured."""
    q, k_cache, v_cache, plan = make_case(edge_lengths(128), 3, 4, 128, cache_dtype, device, q_dtype=torch.float32)
    out = run_decode(q, k_cache, v_cache, plan, CHUNK)
    assert out.dtype == torch.float32
    assert_close(out, expected_output(q, k_cache, v_cache, plan), decode_tolerance(cache_dtype, torch.float32))


def test_decode_chunk_sizes_agree(device):
    """Chunk sizes that are, or are not, powers of two or multiples of BLOCK_N, a single chunk (no combine
    launch) and an oversized grid all give the reference's answer; a custom sm_scale is honoured."""
    lens = [0, 1, 47, 200, 333, 64]
    q, k_cache, v_cache, plan = make_case(lens, 2, 4, 64, torch.float32, device)
    expected = expected_output(q, k_cache, v_cache, plan, sm_scale=0.3)
    for chunk_size in (16, 48, 100, 256, 4096):
        out = run_decode(q, k_cache, v_cache, plan, chunk_size, sm_scale=0.3)
        assert_close(out, expected, TOLERANCE[torch.float32], f"chunk_size={chunk_size}")
    out = ragged_decode_attention(q, k_cache, v_cache, plan.kv_indptr, plan.kv_lens, 0.3, chunk_size=64,
                                  max_chunks=20)
    assert_close(out, expected, TOLERANCE[torch.float32], "max_chunks=20")


def test_decode_default_plan_long_segment(device):
    """One long segment among short ones, with the planner's default chunk size (max_chunks=None path)."""
    lens = [1500, 2, 0, 7, 1, 30]
    q, k_cache, v_cache, plan = make_case(lens, 3, 3, 64, torch.float16, device)
    out = ragged_decode_attention(q, k_cache, v_cache, plan.kv_indptr, plan.kv_lens)
    assert_close(out, expected_output(q, k_cache, v_cache, plan), decode_tolerance(torch.float16))


def test_decode_all_segments_empty(device):
    q, k_cache, v_cache, plan = make_case([0, 0, 0, 0], 2, 2, 64, torch.float32, device)
    for chunk_size in (16, 4096):
        assert torch.equal(run_decode(q, k_cache, v_cache, plan, chunk_size), torch.zeros_like(q))


def test_decode_strided_query_and_out_argument(device):
    """q is a head slice of a fused QKV tensor and out a strided view: out is written in place and returned."""
    batch, num_kv_heads, group, head_dim = 2, 2, 3, 64
    lens = [5, 70, 0, 129]
    _, k_cache, v_cache, plan = make_case(lens, batch, group, head_dim, torch.float32, device)
    num_qo_heads = num_kv_heads * group
    qkv = torch.randn(batch, num_qo_heads + 2 * num_kv_heads, head_dim, device=device)
    q = qkv[:, :num_qo_heads]
    out_buffer = torch.full((batch, num_qo_heads, 2, head_dim), -7.0, device=device)
    out = out_buffer[:, :, 0]
    result = run_decode(q, k_cache, v_cache, plan, 64, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert_close(out, expected_output(q, k_cache, v_cache, plan), TOLERANCE[torch.float32])
    assert torch.all(out_buffer[:, :, 1] == -7.0), "out= wrote outside its view"


@pytest.mark.parametrize("group", [1, 3, 4])
def test_reference_matches_sdpa_on_dense_case(device, group):
    """All segments the same length: the reference (and the kernel) equal SDPA with enable_gqa."""
    batch, num_kv_heads, head_dim, length = 2, 2, 64, 37
    q, k_cache, v_cache, plan = make_case([length] * batch * num_kv_heads, batch, group, head_dim,
                                          torch.float64, device)
    rows = valid_rows(plan).to(device)
    keys = k_cache[rows].view(batch, num_kv_heads, length, head_dim)
    values = v_cache[rows].view(batch, num_kv_heads, length, head_dim)
    sdpa = F.scaled_dot_product_attention(q[:, :, None, :], keys, values, scale=0.2, enable_gqa=True)[:, :, 0]
    assert_close(ragged_decode_attention_ref(q, k_cache, v_cache, plan.kv_indptr, plan.kv_lens, 0.2), sdpa,
                 TOLERANCE[torch.float64], "reference")
    out = run_decode(q.float(), k_cache.float(), v_cache.float(), plan, 16, sm_scale=0.2)
    assert_close(out, sdpa, TOLERANCE[torch.float32], "kernel")


@pytest.mark.parametrize("group", [1, 3])
def test_reference_matches_sdpa_per_segment_on_ragged_lengths(group):
    """The reference packs only valid rows; each segment alone through SDPA must give the same output (fp64),
    and a query group whose segment is empty gets zeros."""
    batch, num_kv_heads, head_dim = 3, 2, 16
    lens = [0, 1, 17, 300, 2, 16]  # one long segment among short ones, an empty one
    q, k_cache, v_cache, plan = make_case(lens, batch, group, head_dim, torch.float64, torch.device("cpu"))
    out = ragged_decode_attention_ref(q, k_cache, v_cache, plan.kv_indptr, plan.kv_lens, 0.3)
    for s, length in enumerate(lens):
        b, h = divmod(s, num_kv_heads)
        queries = q[b, h * group : (h + 1) * group]  # [G, D]
        if length == 0:
            assert torch.all(out[b, h * group : (h + 1) * group] == 0)
            continue
        start = int(plan.kv_indptr[s])
        keys, values = k_cache[start : start + length], v_cache[start : start + length]
        expected = F.scaled_dot_product_attention(queries[None], keys[None], values[None], scale=0.3)[0]
        assert_close(out[b, h * group : (h + 1) * group], expected, TOLERANCE[torch.float64], f"segment {s}")


def test_decode_with_max_chunks_does_not_sync(device):
    q, k_cache, v_cache, plan = make_case([3, 0, 40, 7], 2, 2, 64, torch.float32, device)
    chunk_size, max_chunks = plan_decode(plan.capacities, chunk_size=16)
    with forbid_host_sync():
        out = ragged_decode_attention(q, k_cache, v_cache, plan.kv_indptr, plan.kv_lens, chunk_size=chunk_size,
                                      max_chunks=max_chunks)
    assert_close(out, expected_output(q, k_cache, v_cache, plan), TOLERANCE[torch.float32])
    with pytest.raises(AssertionError, match="host sync"), forbid_host_sync():  # the detector works
        ragged_decode_attention(q, k_cache, v_cache, plan.kv_indptr, plan.kv_lens)


def _bad_decode_args(name):
    """Mutations of a valid call that must fail naming `name`."""
    return {
        "q": [
            lambda a: a.update(q=a["q"].tolist()),
            lambda a: a.update(q=a["q"][0]),
            lambda a: a.update(q=a["q"].to(torch.int32)),
            lambda a: a.update(q=a["q"].transpose(1, 2).contiguous().transpose(1, 2)),
            lambda a: a.update(q=a["q"][:, :3]),
        ],
        "k_cache": [
            lambda a: a.update(k_cache=a["k_cache"].t().contiguous().t()),
            lambda a: a.update(k_cache=a["k_cache"].to("meta")),
            lambda a: a.update(k_cache=a["k_cache"][:, :8].contiguous(), v_cache=a["v_cache"][:, :8].contiguous()),
        ],
        "v_cache": [
            lambda a: a.update(v_cache=a["v_cache"].half()),
            lambda a: a.update(v_cache=a["v_cache"][:-1]),
        ],
        "kv_lens": [
            lambda a: a.update(kv_lens=a["kv_lens"].to(torch.int16)),
            lambda a: a.update(q=torch.cat([a["q"], a["q"][:1]])),
        ],
        "kv_indptr": [lambda a: a.update(kv_indptr=a["kv_indptr"][:-1])],
        "out": [
            lambda a: a.update(out=torch.empty_like(a["q"], dtype=torch.float16)),
            lambda a: a.update(out=a["q"].new_empty(2, 4, 8)),
        ],
        "chunk_size": [lambda a: a.update(chunk_size=None), lambda a: a.update(chunk_size=0)],
        "max_chunks": [lambda a: a.update(max_chunks=0), lambda a: a.update(max_chunks=1.5)],
    }[name]


@pytest.mark.parametrize(
    "name", ["q", "k_cache", "v_cache", "kv_lens", "kv_indptr", "out", "chunk_size", "max_chunks"]
)
def test_decode_bad_arguments_are_named(device, name):
    q, k_cache, v_cache, plan = make_case([3, 5, 0, 2], 2, 2, 16, torch.float32, device)
    for mutate in _bad_decode_args(name):
        args = dict(q=q, k_cache=k_cache, v_cache=v_cache, kv_indptr=plan.kv_indptr, kv_lens=plan.kv_lens,
                    chunk_size=16, max_chunks=2)
        mutate(args)
        with pytest.raises((TypeError, ValueError), match=name):
            ragged_decode_attention(**args)


def test_pick_chunk_size():
    assert _pick_chunk_size([], 2) == 256
    assert _pick_chunk_size([100] * 4, 1) == 256  # 4 programs: two waves of one SM already
    assert _pick_chunk_size([50] * 4, 132) == 256  # under two waves, but halving adds no program
    assert _pick_chunk_size([10_000], 2) == 2048  # rule 1: cdiv(10000, 1024) = 10 > 4 * 2 programs
    assert _pick_chunk_size([10_000, 300] * 60, 132) == 2048  # rule 1: 360 programs, over two waves already
    # Rule 2, the compressed batch-1 case: 8 KV heads of 2304 rows on 132 SMs, 72 programs at 256
    # tokens, 288 (over two waves) at 64.
    assert _pick_chunk_size([2304] * 8, 132) == 64
    assert _pick_chunk_size([2304] * 8, 1000) == 64  # the floor: two 32-token tiles per program
    assert _pick_chunk_size([2304] * 8, 40) == 128  # 144 programs >= 2 * 40 already


def test_pick_block_n():
    assert _pick_block_n(64, 4096) == 32
    assert _pick_block_n(128, 4096) == 32
    assert _pick_block_n(64, 20) == 32
    assert _pick_block_n(128, 1) == 16


def test_plan_decode():
    assert plan_decode(torch.tensor([0, 0], dtype=torch.int32)) == (256, 1)
    assert plan_decode([1000, 3], chunk_size=100) == (100, 10)
    assert plan_decode([4096] * 8, num_sms=4) == (2048, 2)  # 16 programs
    assert plan_decode([2304] * 8, num_sms=132) == (64, 36)  # compressed regime: 288 programs
    with pytest.raises(ValueError, match="capacities"):
        plan_decode([3, -1])
    with pytest.raises(ValueError, match="chunk_size"):
        plan_decode([3], chunk_size=0)
    with pytest.raises(ValueError, match="num_sms"):
        plan_decode([3], num_sms=0)


NEIGHBOUR = 1e4  # every row a probed segment must not read holds this: one read would dominate the output


def _corrupted_case(cache_dtype, index_dtype, device):
    """Probed segments with corrupted lengths between neighbour segments (and trailing rows) full of NEIGHBOUR.

    Returns q, k_cache, v_cache, kv_indptr, kv_lens and the clamped lengths the output must follow.
    """
    huge = 2**31 - 1 if index_dtype == torch.int32 else 2**40
    # (capacity, kv_lens, probed): over capacity, a neighbour, negative, a neighbour, honest (rows past it hold
    # NEIGHBOUR), a neighbour, full, and the last segment far over capacity with NEIGHBOUR rows after the buffer's
    # last segment.
    layout = [(37, 1000, True), (6, 0, False), (70, -4, True), (3, 0, False), (40, 17, True), (5, 0, False),
              (33, 33, True), (45, huge, True)]
    capacities = torch.tensor([cap for cap, _, _ in layout])
    kv_indptr = torch.zeros(len(layout) + 1, dtype=torch.int64)
    kv_indptr[1:] = capacities.cumsum(0)
    lens = torch.tensor([n for _, n, _ in layout], dtype=torch.int64)
    clamped = torch.minimum(lens.clamp(min=0), capacities)
    head_dim, group = 64, 2
    total_slots = int(kv_indptr[-1]) + 9  # trailing rows owned by no segment
    caches = []
    for _ in range(2):
        cache = torch.full((total_slots, head_dim), NEIGHBOUR, dtype=cache_dtype)
        for s, (_, _, probed) in enumerate(layout):
            if probed:
                start = int(kv_indptr[s])
                cache[start : start + int(clamped[s])] = torch.randn(int(clamped[s]), head_dim).to(cache_dtype)
        caches.append(cache.to(device))
    q = torch.randn(2, len(layout) // 2 * group, head_dim, device=device).to(cache_dtype)
    return (q, *caches, kv_indptr.to(device, index_dtype), lens.to(device, index_dtype),
            clamped.to(device, index_dtype))


@pytest.mark.parametrize(
    "cache_dtype, index_dtype",
    [(torch.float32, torch.int64), (torch.float16, torch.int32), (torch.bfloat16, torch.int64)],
    ids=dtype_id,
)
def test_decode_corrupted_lengths_never_read_outside_the_segment(device, cache_dtype, index_dtype):
    """Lengths below 0 or above capacity act as clamped to [0, capacity] (no host sync); a neighbour's rows and the
    rows past the last segment are never read, with one chunk (direct output) or many (combine)."""
    q, k_cache, v_cache, kv_indptr, kv_lens, clamped = _corrupted_case(cache_dtype, index_dtype, device)
    expected = ragged_decode_attention_ref(q.double(), k_cache.double(), v_cache.double(), kv_indptr, clamped)
    capacities = kv_indptr[1:] - kv_indptr[:-1]
    for chunk_size in (16, 4096):
        chunk_size, max_chunks = plan_decode(capacities, chunk_size=chunk_size)
        with forbid_host_sync():
            out = ragged_decode_attention(q, k_cache, v_cache, kv_indptr, kv_lens, chunk_size=chunk_size,
                                          max_chunks=max_chunks)
        assert out.abs().max() < 100, f"chunk_size={chunk_size}: a row holding {NEIGHBOUR} was read"
        assert_close(out, expected, decode_tolerance(cache_dtype), f"chunk_size={chunk_size}")
    assert torch.all(out.view(2, 4, 2, -1)[0, 2] == 0), "segment 2 (negative length) must give zeros"


def _meta_launches(cache_dtype, max_chunks, device="meta"):
    q = torch.empty(2, 32, 128, dtype=torch.bfloat16, device=device)
    k_cache = torch.empty(4096, 128, dtype=cache_dtype, device=device)
    kv_indptr = torch.empty(17, dtype=torch.int64, device=device)
    kv_lens = torch.empty(16, dtype=torch.int32, device=device)
    return _decode_launches(q, k_cache, k_cache, kv_indptr, kv_lens, torch.empty_like(q), sm_scale=None,
                            chunk_size=256, max_chunks=max_chunks)


def test_decode_launches_are_described_without_a_device():
    """`_decode_launches` runs on meta tensors (what the kernel report compiles) and gives the shipped configs."""
    stage1, combine = _meta_launches(torch.bfloat16, max_chunks=4)
    assert (stage1.name, combine.name) == ("_decode_stage1_kernel", "_decode_combine_kernel")
    assert stage1.grid == (16, 4) and combine.grid == (16,)
    assert (stage1.constexprs["BLOCK_N"], stage1.num_warps, stage1.num_stages) == (32, 4, 2)
    assert stage1.constexprs["UPCAST_DOTS"] is False  # the GPU compiles the tensor-core dots
    assert stage1.args[5].shape == (16, 4, 4, 128) and stage1.args[6].shape == (16, 4, 4)  # fp32 partials
    (direct,) = _meta_launches(torch.bfloat16, max_chunks=1)
    assert direct.constexprs["DIRECT_OUT"] is True
    (exact, _) = _meta_launches(torch.float32, max_chunks=2)
    assert exact.constexprs["UPCAST_DOTS"] is True and exact.num_warps == 8
    # On CPU tensors (the interpreter) bf16 dots go through fp32; fp16 keeps the tensor-core path.
    assert _meta_launches(torch.bfloat16, 2, device="cpu")[0].constexprs["UPCAST_DOTS"] is True
    assert _meta_launches(torch.float16, 2, device="cpu")[0].constexprs["UPCAST_DOTS"] is False
