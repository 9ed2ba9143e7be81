"""select_and_pack: the Triton kernel against select_and_pack_ref, the reference against a per-segment top-k loop,
sentinels outside the written rows, several sequences in one cache, bad arguments."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from raggedkv.kernels import plan_segments
from raggedkv.kernels.reference import select_and_pack_ref
from raggedkv.kernels.select_pack import BLOCK_T, _select_and_pack_launches, select_and_pack
from tests.utils import SENTINEL, sentinel_cache

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LENS_SENTINEL = -7  # kv_lens of segments that must not be touched
HEADROOM = 3


@dataclass
class _Cache:
    """One layer's cache and metadata; `sentinel()` fills every row with SENTINEL and kv_lens with LENS_SENTINEL."""

    k: torch.Tensor
    v: torch.Tensor
    kv_indptr: torch.Tensor
    kv_lens: torch.Tensor

    @classmethod
    def sentinel(cls, keep: list[int], head_dim: int, dtype: torch.dtype, device: torch.device) -> _Cache:
        """Segments of capacity `keep[s] + HEADROOM`."""
        plan = plan_segments(torch.tensor(keep), HEADROOM, device=device)
        k = sentinel_cache(plan.total_slots, head_dim, dtype, device)
        return cls(k, k.clone(), plan.kv_indptr, torch.full_like(plan.kv_lens, LENS_SENTINEL))

    def clone(self) -> _Cache:
        return _Cache(self.k.clone(), self.v.clone(), self.kv_indptr, self.kv_lens.clone())

    def pack(self, fn, scores, budgets, k_src, v_src, first_segment: int) -> None:
        fn(scores, budgets, k_src, v_src, self.k, self.v, self.kv_indptr, self.kv_lens, first_segment)

    def assert_equal(self, other: _Cache) -> None:
        assert torch.equal(self.kv_lens, other.kv_lens), (self.kv_lens, other.kv_lens)
        assert torch.equal(self.k, other.k), "k_cache differs"
        assert torch.equal(self.v, other.v), "v_cache differs"

    def assert_untouched_outside(self, written: dict[int, int]) -> None:
        """Rows past `written[s]` in segment s, every row of other segments, and other kv_lens keep sentinels."""
        start = self.kv_indptr[:-1].tolist()
        valid = torch.zeros(self.k.shape[0], dtype=torch.bool, device=self.k.device)
        for segment, rows in written.items():
            valid[start[segment] : start[segment] + rows] = True
            assert int(self.kv_lens[segment]) == rows
        for cache in (self.k, self.v):
            assert (cache[~valid] == SENTINEL).all(), "a row outside the written rows changed"
        others = [s for s in range(self.kv_lens.numel()) if s not in written]
        assert (self.kv_lens[others] == LENS_SENTINEL).all(), "kv_lens of another segment changed"


def _scores(num_src: int, m: int, ties: bool, device: torch.device) -> torch.Tensor:
    """Tie-free scores (a permutation of distinct values) or scores drawn from only 3 values (many ties)."""
    if ties:
        return torch.randint(0, 3, (num_src, m), device=device).float()
    return torch.stack([torch.randperm(m, device=device) for _ in range(num_src)]).float() / max(m, 1)


# (n, w, budgets, ties): budgets 0, 1 and m; one long segment among short ones; no prefix (w == n); kept lengths
# budget + w around one and two blocks of BLOCK_T slots.
CASES = {
    "edges": (100, 8, [0, 1, 92, 5], True),
    "one_long": (300, 16, [2, 284, 3, 1], False),
    "no_prefix": (12, 12, [0, 0], False),
    "block_edges": (140, 4, [BLOCK_T - 5, BLOCK_T - 4, BLOCK_T - 3, 2 * BLOCK_T - 4, 2 * BLOCK_T - 3], True),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_select_and_pack_matches_reference(device, dtype, head_dim, case):
    n, w, budget_list, ties = CASES[case]
    num_src, m, first = len(budget_list), n - w, 1
    scores = _scores(num_src, m, ties, device)
    budgets = torch.tensor(budget_list, dtype=torch.int32, device=device)
    k_src = torch.randn(num_src, n, head_dim, device=device).to(dtype)
    v_src = torch.randn(num_src, n, head_dim, device=device).to(dtype)
    # One segment before and two after the target ones, each with room to spare.
    cache = _Cache.sentinel([5] + [b + w for b in budget_list] + [7, 0], head_dim, dtype, device)
    expected = cache.clone()

    cache.pack(select_and_pack, scores, budgets, k_src, v_src, first)
    expected.pack(select_and_pack_ref, scores, budgets, k_src, v_src, first)
    cache.assert_equal(expected)
    cache.assert_untouched_outside({first + i: b + w for i, b in enumerate(budget_list)})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_select_and_pack_several_sequences_in_one_cache(device, dtype):
    """Two sequences (prompt lengths 90 and 130, 2 KV heads each) packed by first_segment, k/v as strided views
    of an `[n, num_kv_heads, head_dim]` buffer; one trailing segment stays untouched."""
    num_kv_heads, head_dim, w = 2, 64, 8
    sequences = []
    for n, budget_list in ((90, [10, 82]), (130, [0, 40])):
        k_src = torch.randn(n, num_kv_heads, head_dim, device=device).to(dtype).transpose(0, 1)
        v_src = torch.randn(n, num_kv_heads, head_dim, device=device).to(dtype).transpose(0, 1)
        scores = _scores(num_kv_heads, n - w, False, device)
        sequences.append((scores, torch.tensor(budget_list, device=device), k_src, v_src, budget_list))
    keep = [b + w for *_, budget_list in sequences for b in budget_list]
    cache = _Cache.sentinel(keep + [4], head_dim, dtype, device)
    expected = cache.clone()

    for index, (scores, budgets, k_src, v_src, _) in enumerate(sequences):
        cache.pack(select_and_pack, scores, budgets, k_src, v_src, index * num_kv_heads)
        expected.pack(select_and_pack_ref, scores, budgets, k_src, v_src, index * num_kv_heads)
    cache.assert_equal(expected)
    cache.assert_untouched_outside(dict(enumerate(keep)))


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_select_and_pack_accepts_int64_metadata(device, index_dtype):
    """kv_indptr, kv_lens and budgets in either index dtype: the same cache as the int32 reference, dtype kept."""
    n, w, budget_list = 40, 4, [3, 36, 0]
    scores = _scores(len(budget_list), n - w, False, device)
    k_src = torch.randn(len(budget_list), n, 16, device=device)
    v_src = torch.randn_like(k_src)
    cache = _Cache.sentinel([b + w for b in budget_list], 16, torch.float32, device)
    expected = cache.clone()
    cache.kv_indptr, cache.kv_lens = cache.kv_indptr.to(index_dtype), cache.kv_lens.to(index_dtype)
    budgets = torch.tensor(budget_list, dtype=index_dtype, device=device)
    cache.pack(select_and_pack, scores, budgets, k_src, v_src, 0)
    expected.pack(select_and_pack_ref, scores, budgets.int(), k_src, v_src, 0)
    assert cache.kv_lens.dtype == index_dtype
    assert cache.kv_lens.tolist() == expected.kv_lens.tolist() == [b + w for b in budget_list]
    assert torch.equal(cache.k, expected.k) and torch.equal(cache.v, expected.v)


def test_select_and_pack_launch_description_from_meta_tensors():
    """`_select_and_pack_launches` needs shapes only (grid from num_src and n, no budget read): meta tensors work."""
    meta = {"device": "meta"}
    num_src, n, m, head_dim = 3, 2 * BLOCK_T + 1, 2 * BLOCK_T - 7, 80
    k_src = torch.empty(num_src, n, head_dim, dtype=torch.bfloat16, **meta)
    k_cache = torch.empty(1000, head_dim, dtype=torch.bfloat16, **meta)
    (launch,) = _select_and_pack_launches(
        torch.empty(num_src, m, **meta), torch.empty(num_src, dtype=torch.int64, **meta), k_src, k_src, k_cache,
        k_cache, torch.empty(6, dtype=torch.int32, **meta), torch.empty(5, dtype=torch.int32, **meta), 2,
    )
    assert launch.name == "_select_pack_kernel" and launch.grid == (num_src, 3)
    assert dict(launch.constexprs) == {"BLOCK_T": BLOCK_T, "BLOCK_D": 128}
    src_pos = launch.args[0]
    assert src_pos.device.type == "meta" and src_pos.shape == (num_src, m) and src_pos.dtype == torch.int64
    assert launch.args[8:13] == (2, m, n, head_dim, 1000)


def _kept_by_loop(scores_row: torch.Tensor, budget: int, ties: bool) -> torch.Tensor:
    """Top-`budget` positions of one segment in position order: torch.topk on tie-free scores, an explicit
    (-score, position) ordering when there are ties."""
    if not ties:
        return torch.topk(scores_row, budget).indices.sort().values
    values = scores_row.tolist()
    best = sorted(range(len(values)), key=lambda j: (-values[j], j))[:budget]
    return torch.tensor(sorted(best), dtype=torch.int64, device=scores_row.device)


@pytest.mark.parametrize("ties", [False, True])
def test_select_and_pack_ref_matches_topk_loop(device, ties):
    """The oracle itself, against a plain per-segment loop."""
    num_src, n, w, head_dim = 6, 60, 5, 16
    m = n - w
    scores = _scores(num_src, m, ties, device)
    budgets = torch.tensor([0, 1, m, 7, 30, 13], device=device)
    k_src = torch.randn(num_src, n, head_dim, device=device, dtype=torch.float64)
    v_src = torch.randn(num_src, n, head_dim, device=device, dtype=torch.float64)
    cache = _Cache.sentinel([int(b) + w for b in budgets], head_dim, torch.float64, device)
    cache.pack(select_and_pack_ref, scores, budgets, k_src, v_src, 0)

    start = cache.kv_indptr[:-1].tolist()
    for i in range(num_src):
        positions = torch.cat([_kept_by_loop(scores[i], int(budgets[i]), ties), torch.arange(m, n, device=device)])
        rows = slice(start[i], start[i] + positions.numel())
        assert int(cache.kv_lens[i]) == positions.numel()
        assert torch.equal(cache.k[rows], k_src[i, positions])
        assert torch.equal(cache.v[rows], v_src[i, positions])


def _bad_case(device, **overrides):
    """Valid arguments (2 segments, n = 20, w = 4, head_dim 16, capacities 10 and 10) with some replaced."""
    plan = plan_segments(torch.tensor([10, 10]), 0, device=device)
    args = {
        "scores": torch.randn(2, 16, device=device),
        "budgets": torch.tensor([3, 6], device=device),
        "k_src": torch.randn(2, 20, 16, device=device),
        "v_src": torch.randn(2, 20, 16, device=device),
        "k_cache": sentinel_cache(20, 16, torch.float32, device),
        "v_cache": sentinel_cache(20, 16, torch.float32, device),
        "kv_indptr": plan.kv_indptr,
        "kv_lens": plan.kv_lens,
        "first_segment": 0,
    }
    args.update(overrides)
    return args


def _indptr(values, device):
    return torch.tensor(values, dtype=torch.int32, device=device)


BAD_ARGS = [
    ("scores", lambda d: {"scores": torch.zeros(2, 16, dtype=torch.int32, device=d)}, TypeError),
    ("scores", lambda d: {"scores": torch.randn(32, device=d)}, ValueError),
    ("budgets", lambda d: {"budgets": torch.tensor([3.0, 6.0], device=d)}, TypeError),
    ("budgets has 3 entries", lambda d: {"budgets": torch.tensor([3, 6, 1], device=d)}, ValueError),
    ("budgets", lambda d: {"budgets": torch.tensor([3, 6], device="meta")}, ValueError),
    (r"budgets\[1\]=17 \(segment 1\) is outside \[0, m=16\]",
     lambda d: {"budgets": torch.tensor([3, 17], device=d)}, ValueError),
    (r"budgets\[0\]=-1 \(segment 0\) is outside", lambda d: {"budgets": torch.tensor([-1, 6], device=d)}, ValueError),
    (r"budgets\[1\]=7 plus the window w=4 exceeds the capacity 10 of segment 1",
     lambda d: {"budgets": torch.tensor([3, 7], device=d)}, ValueError),
    ("k_src", lambda d: {"k_src": torch.randn(3, 20, 16, device=d)}, ValueError),
    ("k_src", lambda d: {"k_src": torch.randn(2, 15, 16, device=d), "v_src": torch.randn(2, 15, 16, device=d)},
     ValueError),
    ("k_src", lambda d: {"k_src": torch.zeros(2, 20, 16, dtype=torch.int16, device=d)}, TypeError),
    ("k_src", lambda d: {"k_src": torch.randn(2, 16, 20, device=d).transpose(1, 2)}, ValueError),
    ("v_src", lambda d: {"v_src": torch.randn(2, 21, 16, device=d)}, ValueError),
    ("k_cache must be contiguous", lambda d: {"k_cache": sentinel_cache(16, 20, torch.float32, d).t()}, ValueError),
    ("k_cache has head_dim", lambda d: dict.fromkeys(("k_cache", "v_cache"), sentinel_cache(20, 32, torch.float32, d)),
     ValueError),
    ("v_cache", lambda d: {"v_cache": sentinel_cache(21, 16, torch.float32, d)}, ValueError),
    ("v_cache", lambda d: {"v_cache": sentinel_cache(20, 16, torch.float64, d)}, TypeError),
    ("kv_indptr has 2 entries", lambda d: {"kv_indptr": _indptr([0, 10], d)}, ValueError),
    ("kv_indptr", lambda d: {"kv_indptr": _indptr([0, 10, 20], d).float()}, TypeError),
    ("kv_indptr puts segment 1 at rows 10..30", lambda d: {"kv_indptr": _indptr([0, 10, 30], d)}, ValueError),
    ("kv_lens", lambda d: {"kv_lens": torch.zeros(2, device=d)}, TypeError),
    ("kv_lens must be contiguous", lambda d: {"kv_lens": torch.zeros(4, dtype=torch.int32, device=d)[::2]},
     ValueError),
    ("budgets must be contiguous", lambda d: {"budgets": torch.tensor([3, 0, 6, 0], device=d)[::2]}, ValueError),
    ("first_segment=1", lambda d: {"first_segment": 1}, ValueError),
    ("first_segment=-1", lambda d: {"first_segment": -1}, ValueError),
    ("first_segment", lambda d: {"first_segment": 0.0}, TypeError),
]


@pytest.mark.parametrize("name,override,error", BAD_ARGS)
def test_select_and_pack_rejects_bad_arguments(device, name, override, error):
    args = _bad_case(device, **override(device))
    with pytest.raises(error, match=name):
        select_and_pack(**args)
    assert (args["k_cache"] == SENTINEL).all() and (args["v_cache"] == SENTINEL).all(), "wrote before failing"
