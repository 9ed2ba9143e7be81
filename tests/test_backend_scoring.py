"""The engine backends' window scorers: the torch backend's chunked scorer against the fp64 oracle, and neither
backend allocating a `[heads, w, n]` tensor (or a per-query-head copy of K)."""

from __future__ import annotations

import pytest
import torch

from raggedkv.engine.backend import TORCH_BACKEND, TRITON_BACKEND
from raggedkv.kernels.reference import WINDOW_KEY_CHUNK, window_scores_chunked, window_scores_ref
from tests.utils import TOLERANCE, RecordOutputBytes, assert_close

VARIANTS = [
    {},
    {"window_reduce": "sum", "group_reduce": "max", "pool": "avg", "pool_size": 5},
    {"group_reduce": "sum", "pool_size": 1, "sm_scale": 0.3},
]
# (num_kv_heads, group, head_dim, w, n): prefix m = n - w of several chunks with a partial last one, a multiple of
# the chunk, shorter than one chunk, and no prefix at all (w == n).
SHAPES = [(2, 3, 16, 5, 5 + 2 * WINDOW_KEY_CHUNK + 9), (1, 4, 32, 8, 8 + WINDOW_KEY_CHUNK), (3, 1, 16, 4, 20),
          (2, 2, 16, 6, 6)]


def _inputs(num_kv_heads, group, head_dim, w, n, dtype, device):
    """Queries twice as large as keys, so the window attention is peaked rather than flat."""
    q_win = (2 * torch.randn(num_kv_heads * group, w, head_dim, device=device)).to(dtype)
    k = torch.randn(num_kv_heads, n, head_dim, device=device).to(dtype)
    return q_win, k


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
@pytest.mark.parametrize("num_kv_heads,group,head_dim,w,n", SHAPES)
def test_chunked_scores_match_oracle_in_fp64(device, num_kv_heads, group, head_dim, w, n, variant):
    q_win, k = _inputs(num_kv_heads, group, head_dim, w, n, torch.float64, device)
    kwargs = dict(VARIANTS[variant], qo_head_weights=torch.rand(num_kv_heads * group, device=device) + 0.5)
    expected = window_scores_ref(q_win, k, **kwargs)
    got = window_scores_chunked(q_win, k, **kwargs)
    assert got.dtype == torch.float64 and got.shape == (num_kv_heads, n - w)
    assert_close(got, expected, TOLERANCE[torch.float64])


@pytest.mark.parametrize("key_chunk", [1, 7, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_chunked_scores_any_chunk_and_dtype(device, dtype, key_chunk):
    """Strided half-precision inputs (k a view of an `[n, num_kv_heads, head_dim]` buffer) score in fp32 like the
    oracle does from the very same inputs, whatever the chunk size."""
    num_kv_heads, group, head_dim, w, n = 2, 3, 16, 7, 60
    q_win = (2 * torch.randn(num_kv_heads * group, n, head_dim, device=device)).to(dtype)[:, n - w :]
    k = torch.randn(n, num_kv_heads, head_dim, device=device).to(dtype).transpose(0, 1)
    got = window_scores_chunked(q_win, k, window_reduce="sum", key_chunk=key_chunk)
    assert got.dtype == torch.float32
    assert_close(got, window_scores_ref(q_win.double(), k.double(), window_reduce="sum"), TOLERANCE[torch.float32])


def _repeated_keys_scores(q_win: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The positive control: a `repeat_kv` copy of K, as a naive scorer makes."""
    return k.repeat_interleave(q_win.shape[0] // k.shape[0], dim=0).sum(dim=1)


@pytest.mark.parametrize(
    "fn,materialises",
    [(TORCH_BACKEND.window_scores, False), (TRITON_BACKEND.window_scores, False), (window_scores_ref, True),
     (_repeated_keys_scores, True)],
    ids=["torch_backend", "triton_backend", "oracle", "repeat_kv"],
)
def test_backend_scoring_allocates_no_window_by_prompt_tensor(device, fn, materialises):
    """No op output is as large as an fp32 `[w, n - w]` tensor, while the oracle's `[heads, w, n]` logits and a
    `repeat_kv` copy of K are. The inputs are smaller than that (head_dim 16, one KV head), and the prefix is more
    than `group * WINDOW_KEY_CHUNK` keys, so one chunk of the torch scorer is smaller too."""
    num_kv_heads, group, head_dim, w, n = 1, 4, 16, 32, 32 + 4 * WINDOW_KEY_CHUNK + 40
    q_win, k = _inputs(num_kv_heads, group, head_dim, w, n, torch.float32, device)
    limit = w * (n - w) * 4
    assert max(q_win.numel(), k.numel()) * 4 < limit
    with RecordOutputBytes() as recorder:
        fn(q_win, k)
    too_big = [(op, shape) for op, shape, size in recorder.outputs if size >= limit]
    assert bool(too_big) == materialises, too_big
