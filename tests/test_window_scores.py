"""window_scores: the Triton kernel against window_scores_ref (fp64), the reference against SDPA, memory, bad args."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from raggedkv.kernels.reference import window_scores_ref
from raggedkv.kernels.window_scores import BLOCK_N, BLOCK_POOL, window_scores
from tests.utils import TOLERANCE, assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (num_kv_heads, group, head_dim, w, n): prefix m = n - w around the key block, m = 1, no prefix, w = 1,
# m > BLOCK_POOL (several pooling programs), w > 64 (several row tiles).
SHAPES = [
    (2, 1, 64, 8, 8 + BLOCK_N),
    (1, 3, 128, 5, 5 + BLOCK_N - 1),
    (2, 4, 64, 16, 16 + BLOCK_N + 1),
    (1, 4, 128, 32, 33),
    (2, 3, 64, 20, 20),
    (1, 1, 64, 1, 150),
    (1, 4, 128, 40, 40 + BLOCK_POOL + 4),
    (1, 2, 64, 70, 100),  # w > 64: several row tiles in pass 2
]


def _inputs(num_kv_heads, group, head_dim, w, n, dtype, device):
    """Queries twice as large as keys, so the window attention is peaked rather than flat."""
    q_win = (2 * torch.randn(num_kv_heads * group, w, head_dim, device=device)).to(dtype)
    k = torch.randn(num_kv_heads, n, head_dim, device=device).to(dtype)
    return q_win, k


def _reference64(q_win, k, **kwargs):
    """window_scores_ref in fp64 from the very same (possibly low-precision) inputs."""
    return window_scores_ref(q_win.double(), k.double(), **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_kv_heads,group,head_dim,w,n", SHAPES)
def test_window_scores_matches_reference(device, num_kv_heads, group, head_dim, w, n, dtype):
    q_win, k = _inputs(num_kv_heads, group, head_dim, w, n, dtype, device)
    out = window_scores(q_win, k)
    assert out.dtype == torch.float32 and out.shape == (num_kv_heads, n - w)
    assert_close(out, _reference64(q_win, k), TOLERANCE[dtype])


@pytest.mark.parametrize("pool,pool_size", [("max", 1), ("max", 7), ("avg", 3), ("avg", 9)])
@pytest.mark.parametrize("group_reduce", ["mean", "max", "sum"])
@pytest.mark.parametrize("window_reduce", ["sum", "mean"])
def test_window_scores_reduce_and_pool_variants(device, window_reduce, group_reduce, pool, pool_size):
    q_win, k = _inputs(2, 3, 64, 12, 100, torch.float32, device)
    kwargs = {"window_reduce": window_reduce, "group_reduce": group_reduce, "pool": pool, "pool_size": pool_size}
    assert_close(window_scores(q_win, k, **kwargs), _reference64(q_win, k, **kwargs), TOLERANCE[torch.float32])


@pytest.mark.parametrize("weights_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("weights_kind", ["random", "head_mask"])
@pytest.mark.parametrize("group_reduce", ["mean", "max", "sum"])
def test_window_scores_qo_head_weights(device, group_reduce, weights_kind, weights_dtype):
    q_win, k = _inputs(2, 4, 64, 8, 90, torch.float32, device)
    if weights_kind == "random":
        weights = torch.rand(8, device=device) + 0.25
    else:  # only some query heads score, as when a method restricts scoring to selected heads
        weights = torch.tensor([1, 0, 0, 1, 0, 0, 0, 1], dtype=torch.float32, device=device)
    weights = weights.to(weights_dtype)
    kwargs = {"group_reduce": group_reduce, "pool": "avg", "pool_size": 5, "qo_head_weights": weights}
    assert_close(window_scores(q_win, k, **kwargs), _reference64(q_win, k, **kwargs), TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_window_scores_strided_inputs_and_sm_scale(device, dtype):
    """q_win sliced out of all prompt queries, k a transposed view of an `[n, num_kv_heads, head_dim]` buffer."""
    num_kv_heads, group, head_dim, w, n = 2, 3, 64, 9, 110
    q_all = torch.randn(num_kv_heads * group, n, head_dim, device=device).to(dtype)
    k = torch.randn(n, num_kv_heads, head_dim, device=device).to(dtype).transpose(0, 1)
    q_win = q_all[:, n - w :, :]
    assert not q_win.is_contiguous() and not k.is_contiguous()
    kwargs = {"window_reduce": "sum", "group_reduce": "max", "sm_scale": 0.3}
    assert_close(window_scores(q_win, k, **kwargs), _reference64(q_win, k, **kwargs), TOLERANCE[dtype])


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


class _RecordOutputBytes(TorchDispatchMode):
    """Records the size in bytes of every tensor any aten op returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[tuple[str, tuple[int, ...], int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.outputs.append((str(func), tuple(t.shape), t.numel() * t.element_size()))
        return out


@pytest.mark.parametrize("fn,materialises", [(window_scores, False), (window_scores_ref, True)])
def test_window_scores_allocates_no_window_by_prompt_tensor(device, fn, materialises):
    """No op output is as large as an fp32 `[w, n - w]` tensor. The inputs are smaller than that (head_dim 16, one
    KV head), so the interpreter's byte copies of them pass, while the reference's `[heads, w, n]` logits fail."""
    num_kv_heads, group, head_dim, w, n = 1, 4, 16, 32, 300
    q_win, k = _inputs(num_kv_heads, group, head_dim, w, n, torch.float32, device)
    limit = w * (n - w) * 4
    assert max(q_win.numel(), k.numel()) * 4 < limit
    with _RecordOutputBytes() as recorder:
        fn(q_win, k)
    too_big = [(op, shape) for op, shape, size in recorder.outputs if size >= limit]
    assert bool(too_big) == materialises, too_big


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
