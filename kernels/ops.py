"""`torch.ops.raggedkv.*`: every launcher registered as a torch custom op, for torch.compile / export users.

Each op has a fake (meta) implementation, so it traces under `torch.compile(fullgraph=True)`, and declares the
tensors it mutates. There is no device restriction: on CUDA tensors (or on CPU under `TRITON_INTERPRET=1`) an op
runs the Triton launcher; on CPU otherwise it runs the pure-torch reference (for `window_scores`, its chunked
twin `window_scores_chunked`), so the ops work everywhere.
`append_kv` and `select_and_pack` apply the launcher's own argument checks on both paths (same dtypes, shapes
and messages). `import raggedkv.kernels` registers the ops.

| op | mutates | returns |
|---|---|---|
| `torch.ops.raggedkv.window_scores` | - | fp32 `[num_kv_heads, n - w]` |
| `torch.ops.raggedkv.select_and_pack` | `k_cache`, `v_cache`, `kv_lens` | None |
| `torch.ops.raggedkv.append_kv` | `k_cache`, `v_cache`, `kv_lens` | None |
| `torch.ops.raggedkv.ragged_decode_attention` | - | `[batch, num_qo_heads, head_dim]` in q's dtype |

The engine calls the plain launchers (no dispatcher overhead); the ops are the interface for other runtimes.
"""

from __future__ import annotations

import torch

from . import reference
from ._utils import is_interpreter
from .append import append_kv, check_append_args
from .decode import ragged_decode_attention
from .select_pack import check_select_and_pack_args, select_and_pack
from .window_scores import window_scores


def _use_triton(t: torch.Tensor) -> bool:
    return t.device.type == "cuda" or is_interpreter()


@torch.library.custom_op("raggedkv::window_scores", mutates_args=())
def window_scores_op(
    q_win: torch.Tensor,
    k: torch.Tensor,
    window_reduce: str = "mean",
    group_reduce: str = "mean",
    pool: str = "max",
    pool_size: int = 7,
    qo_head_weights: torch.Tensor | None = None,
    sm_scale: float | None = None,
) -> torch.Tensor:
    fn = window_scores if _use_triton(q_win) else reference.window_scores_chunked
    out = fn(q_win, k, window_reduce=window_reduce, group_reduce=group_reduce, pool=pool, pool_size=pool_size,
             qo_head_weights=qo_head_weights, sm_scale=sm_scale)
    return out.to(torch.float32)


@window_scores_op.register_fake
def _(q_win, k, window_reduce="mean", group_reduce="mean", pool="max", pool_size=7, qo_head_weights=None,
      sm_scale=None):
    return q_win.new_empty((k.shape[0], k.shape[1] - q_win.shape[1]), dtype=torch.float32)


@torch.library.custom_op("raggedkv::select_and_pack", mutates_args=("k_cache", "v_cache", "kv_lens"))
def select_and_pack_op(
    scores: torch.Tensor,
    budgets: torch.Tensor,
    k_src: torch.Tensor,
    v_src: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_lens: torch.Tensor,
    first_segment: int = 0,
) -> None:
    if _use_triton(k_cache):
        select_and_pack(scores, budgets, k_src, v_src, k_cache, v_cache, kv_indptr, kv_lens, first_segment)
        return
    check_select_and_pack_args(scores, budgets, k_src, v_src, k_cache, v_cache, kv_indptr, kv_lens, first_segment)
    reference.select_and_pack_ref(scores, budgets, k_src, v_src, k_cache, v_cache, kv_indptr, kv_lens, first_segment)


@select_and_pack_op.register_fake
def _(scores, budgets, k_src, v_src, k_cache, v_cache, kv_indptr, kv_lens, first_segment=0):
    return None


@torch.library.custom_op("raggedkv::append_kv", mutates_args=("k_cache", "v_cache", "kv_lens"))
def append_kv_op(
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_lens: torch.Tensor,
) -> None:
    if _use_triton(k_cache):
        append_kv(k_new, v_new, k_cache, v_cache, kv_indptr, kv_lens)
        return
    check_append_args(k_new, v_new, k_cache, v_cache, kv_indptr, kv_lens)
    reference.append_kv_ref(k_new, v_new, k_cache, v_cache, kv_indptr, kv_lens)


@append_kv_op.register_fake
def _(k_new, v_new, k_cache, v_cache, kv_indptr, kv_lens):
    return None


@torch.library.custom_op("raggedkv::ragged_decode_attention", mutates_args=())
def ragged_decode_attention_op(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_lens: torch.Tensor,
    sm_scale: float | None = None,
    max_chunks: int | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    if _use_triton(q):
        return ragged_decode_attention(q, k_cache, v_cache, kv_indptr, kv_lens, sm_scale,
                                       max_chunks=max_chunks, chunk_size=chunk_size)
    return reference.ragged_decode_attention_ref(q, k_cache, v_cache, kv_indptr, kv_lens, sm_scale)


@ragged_decode_attention_op.register_fake
def _(q, k_cache, v_cache, kv_indptr, kv_lens, sm_scale=None, max_chunks=None, chunk_size=None):
    return torch.empty_like(q)
