"""The embedders' metadata contract, property-tested: whatever `kv_lens` (or `budgets`) holds -- negative, zero,
full, over capacity -- `append_kv`, `select_and_pack` and `ragged_decode_attention`, on the Triton path (the
interpreter without a GPU) and in the references, touch only rows `kv_indptr[s] .. kv_indptr[s + 1]` and give the
result of the lengths clamped to `[0, capacity]`.

Every case lays its segments out between PAD sentinel rows before the first one and a tail of sentinel rows after
the last (long enough that even an unclamped decode stays inside the buffer, so a broken kernel fails here instead
of crashing the interpreter); the rows of each segment past its clamped length hold sentinels too. Expected results
are spelled out per segment in plain Python (SDPA for decode), independent of the code under test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raggedkv.kernels import plan_decode
from raggedkv.kernels.append import append_kv
from raggedkv.kernels.decode import ragged_decode_attention
from raggedkv.kernels.reference import append_kv_ref, ragged_decode_attention_ref, select_and_pack_ref
from raggedkv.kernels.select_pack import _select_and_pack_launches, select_and_pack
from tests.utils import SENTINEL, TOLERANCE, assert_close

HEAD_DIM = 16
PAD = 3  # sentinel rows before the first segment
MAX_CAPACITY = 6
CHUNK = 4  # decode chunk size: an unclamped decode reads at most cdiv(capacity, CHUNK) * CHUNK rows per segment
TAIL = MAX_CAPACITY + CHUNK  # sentinel rows after the last segment
INT32_MAX = 2**31 - 1
CONTRACT_SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def corrupted_length(capacity: int) -> st.SearchStrategy[int]:
    """A stored length as a buggy caller leaves it: negative, zero, in range, full, just over, far over."""
    return st.one_of(
        st.sampled_from([-(2**31), -1, 0, capacity, capacity + 1, INT32_MAX]),
        st.integers(-5, -1),
        st.integers(0, capacity),
        st.integers(capacity + 1, capacity + 20),
    )


@st.composite
def layouts(draw):
    """Segment capacities (0..MAX_CAPACITY), a corrupted length for each, the index dtype and a seed."""
    capacities = draw(st.lists(st.integers(0, MAX_CAPACITY), min_size=1, max_size=4))
    return dict(
        capacities=capacities,
        lens=[draw(corrupted_length(cap)) for cap in capacities],
        index_dtype=draw(st.sampled_from([torch.int32, torch.int64])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


class Case:
    """Sentinel-filled caches for a layout: random values only in the first clamped-length rows of each segment.

    K sentinels are 0 (a key every query attends to with weight ~1) and V sentinels SENTINEL, so a decode that
    reads one moves its output far; a write anywhere outside a segment changes a sentinel.
    """

    def __init__(self, layout: dict, device: torch.device) -> None:
        torch.manual_seed(layout["seed"])
        self.capacities = layout["capacities"]
        self.starts = [PAD + sum(self.capacities[:s]) for s in range(len(self.capacities))]
        self.clamped = [min(max(n, 0), cap) for n, cap in zip(layout["lens"], self.capacities, strict=True)]
        total = PAD + sum(self.capacities) + TAIL
        self.k = torch.zeros(total, HEAD_DIM, device=device)
        self.v = torch.full((total, HEAD_DIM), SENTINEL, device=device)
        for start, n in zip(self.starts, self.clamped, strict=True):
            self.k[start : start + n] = torch.randn(n, HEAD_DIM, device=device)
            self.v[start : start + n] = torch.randn(n, HEAD_DIM, device=device)
        index_dtype = layout["index_dtype"]
        self.kv_indptr = torch.tensor([*self.starts, PAD + sum(self.capacities)], dtype=index_dtype, device=device)
        self.kv_lens = torch.tensor(layout["lens"], dtype=index_dtype, device=device)

    def copies(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.k.clone(), self.v.clone(), self.kv_lens.clone()


@CONTRACT_SETTINGS
@given(layout=layouts())
def test_append_writes_only_at_the_clamped_length(device, layout):
    """Negative lengths count as 0; a segment at (clamped) capacity keeps its rows and its stored length."""
    case = Case(layout, device)
    k_new = torch.randn(len(case.capacities), HEAD_DIM, device=device)
    v_new = torch.randn_like(k_new)
    expected_k, expected_v, expected_lens = case.copies()
    for s, (start, n, cap) in enumerate(zip(case.starts, case.clamped, case.capacities, strict=True)):
        if n < cap:
            expected_k[start + n], expected_v[start + n], expected_lens[s] = k_new[s], v_new[s], n + 1

    for append in (append_kv, append_kv_ref):
        k_cache, v_cache, kv_lens = case.copies()
        append(k_new, v_new, k_cache, v_cache, case.kv_indptr, kv_lens)
        assert torch.equal(kv_lens, expected_lens), (append.__name__, kv_lens.tolist(), expected_lens.tolist())
        assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v), append.__name__


def _expected_decode(q: torch.Tensor, case: Case) -> torch.Tensor:
    """fp64 attention of each segment's query group over its clamped-length rows; zeros for an empty segment."""
    group = q.shape[1] // len(case.capacities)
    out = torch.zeros(q.shape, dtype=torch.float64)
    for s, (start, n) in enumerate(zip(case.starts, case.clamped, strict=True)):
        if n:
            heads = slice(s * group, (s + 1) * group)
            rows = slice(start, start + n)
            out[0, heads] = F.scaled_dot_product_attention(
                q[0, heads].double().cpu(), case.k[rows].double().cpu(), case.v[rows].double().cpu()
            )
    return out


@CONTRACT_SETTINGS
@given(layout=layouts(), group=st.integers(1, 2))
def test_decode_reads_only_the_clamped_length(device, layout, group):
    """One sequence whose KV heads are the segments: each query group sees exactly its clamped-length rows, and
    the caches and lengths are left as they were."""
    case = Case(layout, device)
    q = torch.randn(1, group * len(case.capacities), HEAD_DIM, device=device)
    expected = _expected_decode(q, case)
    before = case.copies()

    reference = ragged_decode_attention_ref(q.double(), case.k.double(), case.v.double(), case.kv_indptr,
                                            case.kv_lens)
    assert_close(reference, expected, TOLERANCE[torch.float64], "reference")
    chunk_size, max_chunks = plan_decode(case.capacities, chunk_size=CHUNK)
    out = ragged_decode_attention(q, case.k, case.v, case.kv_indptr, case.kv_lens, chunk_size=chunk_size,
                                  max_chunks=max_chunks)
    assert_close(out, expected, TOLERANCE[torch.float32], "triton")
    for now, then in zip(case.copies(), before, strict=True):
        assert torch.equal(now, then), "decode changed the cache or the lengths"


@st.composite
def packs(draw):
    """A layout plus a pack into some of its segments: prompt length, window and corrupted budgets."""
    layout = draw(layouts())
    num_segments = len(layout["capacities"])
    first = draw(st.integers(0, num_segments - 1))
    num_src = draw(st.integers(1, num_segments - first))
    w = draw(st.integers(0, 3))
    m = draw(st.integers(0, 8))
    budget = st.one_of(st.sampled_from([-(2**31), -1, 0, m, m + 1, INT32_MAX]), st.integers(-3, m + 8))
    budgets = draw(st.lists(budget, min_size=num_src, max_size=num_src))
    return dict(layout=layout, first=first, w=w, m=m, budgets=budgets)


def _expected_pack(case: Case, pack: dict, scores, k_src, v_src):
    """Each target segment gets the first min(clamp(budget, 0, m) + w, capacity) tokens of [its top-budget prefix
    tokens in position order, then the window]; kv_lens becomes that count. Nothing else changes."""
    expected_k, expected_v, expected_lens = case.copies()
    m, w = pack["m"], pack["w"]
    for i, budget in enumerate(pack["budgets"]):
        segment = pack["first"] + i
        kept = min(max(budget, 0), m)
        positions = sorted(torch.topk(scores[i].cpu(), kept).indices.tolist()) + list(range(m, m + w))
        positions = positions[: case.capacities[segment]]
        start = case.starts[segment]
        expected_k[start : start + len(positions)] = k_src[i, positions]
        expected_v[start : start + len(positions)] = v_src[i, positions]
        expected_lens[segment] = len(positions)
    return expected_k, expected_v, expected_lens


@CONTRACT_SETTINGS
@given(pack=packs())
def test_select_and_pack_stays_inside_its_segments(device, pack):
    """The public launcher refuses budgets it cannot honour and writes nothing; the launches alone (no host check)
    and the reference clamp them and write inside the target segments only. Old `kv_lens` values are ignored."""
    case = Case(pack["layout"], device)
    num_src, m, w = len(pack["budgets"]), pack["m"], pack["w"]
    scores = torch.stack([torch.randperm(m, device=device) for _ in range(num_src)]).float()  # no ties
    k_src = torch.randn(num_src, m + w, HEAD_DIM, device=device)
    v_src = torch.randn_like(k_src)
    budgets = torch.tensor(pack["budgets"], dtype=case.kv_lens.dtype, device=device)
    expected = _expected_pack(case, pack, scores, k_src, v_src)
    capacities = case.capacities[pack["first"] : pack["first"] + num_src]
    honourable = all(0 <= b <= m and b + w <= cap for b, cap in zip(pack["budgets"], capacities, strict=True))

    def launches(*args):
        for launch in _select_and_pack_launches(*args):
            launch()

    for pack_fn in (select_and_pack, launches, select_and_pack_ref):
        k_cache, v_cache, kv_lens = case.copies()
        args = (scores, budgets, k_src, v_src, k_cache, v_cache, case.kv_indptr, kv_lens, pack["first"])
        if pack_fn is select_and_pack and not honourable:
            with pytest.raises(ValueError, match="budgets"):
                pack_fn(*args)
            assert torch.equal(k_cache, case.k) and torch.equal(v_cache, case.v) and torch.equal(kv_lens, case.kv_lens)
            continue
        pack_fn(*args)
        name = getattr(pack_fn, "__name__", "launches")
        assert torch.equal(kv_lens, expected[2]), (name, kv_lens.tolist(), expected[2].tolist())
        assert torch.equal(k_cache, expected[0]) and torch.equal(v_cache, expected[1]), name
