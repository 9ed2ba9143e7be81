"""window_scores: the Triton kernels against window_scores_ref (fp64), the reference against SDPA, the launch
description on `meta` tensors, memory, bad arguments.

Paths and tolerances (max error relative to the largest expected score, `tests.utils.assert_close`):
- Tensor-core path (q_win and k both fp16, or both bf16 on a GPU): tiles feed `tl.dot` in their own dtype with fp32
  accumulation. Neither pass multiplies probabilities in a dot (pass 2 sums them in fp32 along the rows of the
  transposed logits), so no P is rounded to half precision. A product of two half-precision numbers is exact in
  fp32; the only error is accumulating `head_dim` products c * q_j * k_j into a logit t (c = sm_scale * log2 e),
  which moves a probability by ln(2) * (|dt| + |dlse|) relative. With round-to-nearest (numpy under the interpreter)
  the error is a random walk, |dt| ~ u * sqrt(sum_j |partial sum_j|^2) ~ 2e-6 for these inputs (q ~ 2 N(0, 1),
  k ~ N(0, 1), head_dim 128, u = 2^-24); measured 1.1e-6. A GPU accumulator that truncates (a directed error of up
  to 2u per addition) can add up to u * sum_j |partial sum_j| ~ 3e-5. Tolerance `TOL_TENSOR_CORE` = 5e-5 covers
  both, and still fails a P rounded to fp16 (~2e-4 on these shapes) or bf16 (~1e-3).
- Exact path (an fp32 input, mixed dtypes, or bf16 on the CPU): tiles upcast to fp32, IEEE fp32 dots (rounded
  products, round-to-nearest accumulation): the random-walk bound, measured 1.7e-6; tolerance
  `TOLERANCE[torch.float32]` = 1e-5.
Under the Triton interpreter (CPU) bf16 arithmetic is wrong, so bf16 inputs on the CPU take the exact path and the
tensor-core path is covered there with fp16 inputs; bf16 tensor-core dots are covered by the kernel resource report
(ahead-of-time compile for sm_80/sm_90) and by these same tests on a GPU.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raggedkv.kernels.reference import window_scores_ref
from raggedkv.kernels.window_scores import (
    BLOCK_POOL,
    _is_exact,
    _lse_config,
    _scores_config,
    _window_lse_kernel,
    _window_scores_kernel,
    _window_scores_launches,
    window_scores,
)
from tests.utils import TOLERANCE, assert_close

TOL_TENSOR_CORE = 5e-5
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _tolerance(q_win: torch.Tensor, k: torch.Tensor) -> float:
    """The documented tolerance of the path these inputs take (see the module docstring)."""
    return TOLERANCE[torch.float32] if _is_exact(q_win, k) else TOL_TENSOR_CORE


def _blocks(dtype: torch.dtype, device: torch.device) -> tuple[int, int]:
    """(keys per pass-1 step, keys per pass-2 program) of the path `dtype` inputs take on `device`."""
    probe = torch.empty(1, 1, 16, dtype=dtype, device=device)
    exact = _is_exact(probe, probe)
    return _lse_config(1, exact)[1], _scores_config(1, exact)[1]


def _edge_shapes(dtype: torch.dtype, device: torch.device) -> list[tuple[int, int, int, int, int]]:
    """(num_kv_heads, group, head_dim, w, n) around the block sizes of the path `dtype` takes: prefix m = n - w at a
    pass-2 key block +-1, the keys every row sees (n - w + 1) at a pass-1 key step +-1, w == 1, w == n, m == 1,
    group 1 and > 1, head_dim not a power of two, m > BLOCK_POOL, w > 64 (several row tiles)."""
    lse_block, key_block = _blocks(dtype, device)
    return [
        (2, 1, 64, 8, 8 + key_block),
        (1, 3, 128, 5, 5 + key_block - 1),
        (1, 4, 64, 16, 16 + key_block + 1),
        (1, 2, 64, 6, 6 + lse_block - 2),  # n - w + 1 == lse_block - 1
        (1, 2, 48, 3, 3 + lse_block),  # n - w + 1 == lse_block + 1
        (1, 4, 128, 32, 33),
        (2, 3, 64, 20, 20),
        (1, 1, 64, 1, 150),
        (1, 4, 32, 40, 40 + BLOCK_POOL + 4),
        (1, 2, 64, 70, 100),
    ]


def _random_shape() -> tuple[int, int, int, int, int]:
    """A small random (num_kv_heads, group, head_dim, w, n), drawn from the test's seed."""
    pick = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,)))  # noqa: E731
    num_kv_heads, group, head_dim = pick(1, 2), pick(1, 4), [16, 40, 64, 128][pick(0, 3)]
    n = pick(1, 160)
    return num_kv_heads, group, head_dim, pick(1, min(n, 40)), n


def _inputs(num_kv_heads, group, head_dim, w, n, dtype, device, k_dtype=None):
    """Queries twice as large as keys, so the window attention is peaked rather than flat."""
    q_win = (2 * torch.randn(num_kv_heads * group, w, head_dim, device=device)).to(dtype)
    k = torch.randn(num_kv_heads, n, head_dim, device=device).to(k_dtype or dtype)
    return q_win, k


def _reference64(q_win, k, **kwargs):
    """window_scores_ref in fp64 from the very same (possibly low-precision) inputs."""
    return window_scores_ref(q_win.double(), k.double(), **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(12))
def test_window_scores_matches_reference(device, case, dtype):
    """Ten edge shapes of the path the dtype takes, then two random shapes."""
    shapes = _edge_shapes(dtype, device)
    shape = shapes[case] if case < len(shapes) else _random_shape()
    num_kv_heads, _, _, w, n = shape
    q_win, k = _inputs(*shape, dtype, device)
    out = window_scores(q_win, k)
    assert out.dtype == torch.float32 and out.shape == (num_kv_heads, n - w), shape
    assert_close(out, _reference64(q_win, k), _tolerance(q_win, k), what=f"shape {shape}")


@pytest.mark.parametrize("q_dtype,k_dtype", [(torch.float32, torch.float16), (torch.float16, torch.bfloat16)])
def test_window_scores_mixed_dtypes_take_the_exact_path(device, q_dtype, k_dtype):
    q_win, k = _inputs(2, 3, 64, 9, 80, q_dtype, device, k_dtype=k_dtype)
    assert _is_exact(q_win, k)
    assert_close(window_scores(q_win, k), _reference64(q_win, k), TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("pool,pool_size", [("max", 1), ("max", 7), ("avg", 3), ("avg", 9)])
@pytest.mark.parametrize("group_reduce", ["mean", "max", "sum"])
@pytest.mark.parametrize("window_reduce", ["sum", "mean"])
def test_window_scores_reduce_and_pool_variants(device, window_reduce, group_reduce, pool, pool_size, dtype):
    q_win, k = _inputs(2, 3, 32, 12, 80, dtype, device)
    kwargs = {"window_reduce": window_reduce, "group_reduce": group_reduce, "pool": pool, "pool_size": pool_size}
    assert_close(window_scores(q_win, k, **kwargs), _reference64(q_win, k, **kwargs), _tolerance(q_win, k))


@pytest.mark.parametrize("weights_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("weights_kind", ["random", "head_mask"])
@pytest.mark.parametrize("group_reduce", ["mean", "max", "sum"])
def test_window_scores_qo_head_weights(device, group_reduce, weights_kind, weights_dtype):
    q_win, k = _inputs(2, 4, 64, 8, 90, weights_dtype, device)
    if weights_kind == "random":
        weights = torch.rand(8, device=device) + 0.25
    else:  # only some query heads score, as when a method restricts scoring to selected heads
        weights = torch.tensor([1, 0, 0, 1, 0, 0, 0, 1], dtype=torch.float32, device=device)
    weights = weights.to(weights_dtype)
    kwargs = {"group_reduce": group_reduce, "pool": "avg", "pool_size": 5, "qo_head_weights": weights}
    assert_close(window_scores(q_win, k, **kwargs), _reference64(q_win, k, **kwargs), _tolerance(q_win, k))


@pytest.mark.parametrize("dtype", DTYPES)
def test_window_scores_strided_inputs_and_sm_scale(device, dtype):
    """q_win sliced out of all prompt queries, k a transposed view of an `[n, num_kv_heads, head_dim]` buffer."""
    num_kv_heads, group, head_dim, w, n = 2, 3, 64, 9, 110
    q_all = torch.randn(num_kv_heads * group, n, head_dim, device=device).to(dtype)
    k = torch.randn(n, num_kv_heads, head_dim, device=device).to(dtype).transpose(0, 1)
    q_win = q_all[:, n - w :, :]
    assert not q_win.is_contiguous() and not k.is_contiguous()
    kwargs = {"window_reduce": "sum", "group_reduce": "max", "sm_scale": 0.3}
    assert_close(window_scores(q_win, k, **kwargs), _reference64(q_win, k, **kwargs), _tolerance(q_win, k))


@pytest.mark.parametrize(
    "q_dtype,k_dtype,device_type,exact",
    [
        (torch.bfloat16, torch.bfloat16, "meta", False),
        (torch.float16, torch.float16, "meta", False),
        (torch.float16, torch.float16, "cpu", False),
        (torch.bfloat16, torch.bfloat16, "cpu", True),  # the interpreter's bf16 arithmetic is wrong
        (torch.float32, torch.float32, "meta", True),
        (torch.float32, torch.bfloat16, "meta", True),
        (torch.bfloat16, torch.float16, "meta", True),
    ],
)
def test_window_scores_path_choice(q_dtype, k_dtype, device_type, exact):
    q_win = torch.empty(4, 8, 64, dtype=q_dtype, device=device_type)
    k = torch.empty(2, 100, 64, dtype=k_dtype, device=device_type)
    assert _is_exact(q_win, k) == exact


@pytest.mark.parametrize("pool_size", [1, 7])
@pytest.mark.parametrize("w", [8, 32, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_window_scores_launches_on_meta_tensors(w, dtype, pool_size):
    """The launch description of the Llama-3-8B shape at 32K is built from `meta` tensors (no device reads): pass 1
    over the group's window rows, pass 2 over key blocks, pooling only when asked; both passes share the path."""
    num_qo_heads, num_kv_heads, head_dim, n = 32, 8, 128, 32768
    q_win = torch.empty(num_qo_heads, w, head_dim, dtype=dtype, device="meta")
    k = torch.empty(num_kv_heads, n, head_dim, dtype=dtype, device="meta")
    lse = torch.empty(num_qo_heads, w, device="meta")
    scores = torch.empty(num_kv_heads, n - w, device="meta")
    pooled = torch.empty_like(scores) if pool_size > 1 else None
    launches = _window_scores_launches(
        q_win, k, lse, scores, pooled, window_reduce="mean", group_reduce="max", pool="max", pool_size=pool_size,
        qo_head_weights=None, sm_scale=None,
    )
    assert [launch.name for launch in launches][:2] == ["_window_lse_kernel", "_window_scores_kernel"]
    assert len(launches) == (3 if pool_size > 1 else 2)
    lse_launch, scores_launch = launches[:2]
    assert lse_launch.kernel is _window_lse_kernel and scores_launch.kernel is _window_scores_kernel
    exact = dtype == torch.float32
    for launch in (lse_launch, scores_launch):
        assert launch.constexprs["EXACT"] == exact and launch.constexprs["HEAD_DIM"] == head_dim
    rows = num_qo_heads // num_kv_heads * w
    assert lse_launch.grid == (num_kv_heads, math.ceil(rows / lse_launch.constexprs["BLOCK_M"]))
    assert scores_launch.grid == (num_kv_heads, math.ceil((n - w) / scores_launch.constexprs["BLOCK_N"]))
    assert scores_launch.constexprs["GROUP_REDUCE"] == 1 and not scores_launch.constexprs["HAS_WEIGHTS"]


def test_window_scores_launches_empty_without_prefix():
    q_win = torch.empty(4, 20, 64, device="meta")
    k = torch.empty(2, 20, 64, device="meta")
    empty = torch.empty(2, 0, device="meta")
    assert _window_scores_launches(
        q_win, k, torch.empty(4, 20, device="meta"), empty, empty, window_reduce="mean", group_reduce="mean",
        pool="max", pool_size=7, qo_head_weights=None, sm_scale=None,
    ) == []


def _pool_explicit(x: torch.Tensor, pool: str, size: int) -> torch.Tensor:
    """Stride-1 pooling written out: pad by size // 2 (-inf for max, 0 for avg), slide, reduce."""
    pad = size // 2
    padded = F.pad(x, (pad, pad), value=float("-inf") if pool == "max" else 0.0)
    windows = padded.unfold(-1, size, 1)
    return windows.amax(-1) if pool == "max" else windows.sum(-1) / size


@pytest.mark.parametrize(
    "window_reduce,group_reduce,pool,pool_size,use_weights",
    [("mean", "mean", "max", 7, False), ("sum", "max", "avg", 5, True), ("mean", "sum", "avg", 1, True)],
)
def test_window_scores_ref_matches_sdpa(device, window_reduce, group_reduce, pool, pool_size, use_weights):
    """The oracle itself: probabilities from SDPA with V = I (its output is the attention matrix), GQA by SDPA."""
    num_kv_heads, group, head_dim, w, n = 2, 3, 32, 10, 50
    q_win, k = _inputs(num_kv_heads, group, head_dim, w, n, torch.float64, device)
    weights = torch.rand(num_kv_heads * group, dtype=torch.float64, device=device) if use_weights else None
    causal = torch.arange(n, device=device)[None, :] <= torch.arange(n - w, n, device=device)[:, None]  # [w, n]
    identity = torch.eye(n, dtype=torch.float64, device=device).expand(1, num_kv_heads, n, n)
    probs = F.scaled_dot_product_attention(
        q_win[None], k[None], identity, attn_mask=causal, scale=1 / math.sqrt(head_dim), enable_gqa=True
    )[0]  # [num_qo_heads, w, n]

    per_head = probs[:, :, : n - w].sum(dim=1)
    if window_reduce == "mean":
        per_head = per_head / w
    if weights is not None:
        per_head = per_head * weights[:, None]
    grouped = per_head.reshape(num_kv_heads, group, n - w)
    reduced = {"mean": grouped.mean(1), "max": grouped.amax(1), "sum": grouped.sum(1)}[group_reduce]
    expected = _pool_explicit(reduced, pool, pool_size)

    got = window_scores_ref(
        q_win, k, window_reduce=window_reduce, group_reduce=group_reduce, pool=pool, pool_size=pool_size,
        qo_head_weights=weights,
    )
    assert_close(got, expected, TOLERANCE[torch.float64])


def _bad_case(device, **overrides):
    """Valid arguments (q_win [4, 8, 16], k [2, 20, 16]) with some replaced."""
    args = {"q_win": torch.randn(4, 8, 16, device=device), "k": torch.randn(2, 20, 16, device=device)}
    args.update(overrides)
    return args


BAD_ARGS = [
    ("q_win", lambda d: {"q_win": [[0.0]]}, TypeError),
    ("q_win", lambda d: {"q_win": torch.randn(4, 8, 16, device=d).double()}, TypeError),
    ("q_win", lambda d: {"q_win": torch.zeros(4, 8, 16, dtype=torch.int32, device=d)}, TypeError),
    ("q_win", lambda d: {"q_win": torch.randn(8, 16, device=d)}, ValueError),
    ("q_win", lambda d: {"q_win": torch.randn(4, 16, 8, device=d).transpose(1, 2)}, ValueError),
    ("^k ", lambda d: {"k": torch.zeros(2, 20, 16, dtype=torch.int16, device=d)}, TypeError),
    ("^k ", lambda d: {"k": torch.randn(1, 2, 20, 16, device=d)}, ValueError),
    ("^k ", lambda d: {"k": torch.randn(2, 20, 16, device="meta")}, ValueError),
    ("^k has head_dim", lambda d: {"k": torch.randn(2, 20, 32, device=d)}, ValueError),
    ("q_win has 5 query heads", lambda d: {"q_win": torch.randn(5, 8, 16, device=d)}, ValueError),
    ("q_win has a window of w=21", lambda d: {"q_win": torch.randn(4, 21, 16, device=d)}, ValueError),
    ("q_win has a window of w=0", lambda d: {"q_win": torch.randn(4, 0, 16, device=d)}, ValueError),
    ("window_reduce", lambda d: {"window_reduce": "max"}, ValueError),
    ("group_reduce", lambda d: {"group_reduce": "min"}, ValueError),
    ("pool=", lambda d: {"pool": "min"}, ValueError),
    ("pool_size", lambda d: {"pool_size": 4}, ValueError),
    ("pool_size", lambda d: {"pool_size": -1}, ValueError),
    ("pool_size", lambda d: {"pool_size": 3.0}, TypeError),
    ("qo_head_weights", lambda d: {"qo_head_weights": torch.ones(3, device=d)}, ValueError),
    ("qo_head_weights", lambda d: {"qo_head_weights": torch.ones(4, 1, device=d)}, ValueError),
    ("qo_head_weights", lambda d: {"qo_head_weights": torch.ones(4, dtype=torch.int64, device=d)}, TypeError),
    ("sm_scale", lambda d: {"sm_scale": -1.0}, ValueError),
    ("sm_scale", lambda d: {"sm_scale": float("nan")}, ValueError),
    ("sm_scale", lambda d: {"sm_scale": "0.1"}, TypeError),
]


@pytest.mark.parametrize("name,override,error", BAD_ARGS)
def test_window_scores_rejects_bad_arguments(device, name, override, error):
    with pytest.raises(error, match=name):
        window_scores(**_bad_case(device, **override(device)))
