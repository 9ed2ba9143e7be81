"""Pure-torch references for every raggedkv launcher: the test oracle and the CPU backend.

Each `<name>_ref` takes the launcher's arguments minus its tuning knobs and does the same thing, readably and
vectorised (no Python loop over segments or heads). They compute in fp32, or in fp64 when given fp64 inputs, so
tests can compare a kernel against an fp64 oracle. This module imports no Triton. `window_scores_ref`
materialises `[heads, w, n]` for readability; the torch backend scores with `window_scores_chunked` (the same
result a chunk of keys at a time, tested against it).

Layout (see `raggedkv.kernels` for the picture): a segment `s = b * num_kv_heads + h` is one (sequence, KV head);
it owns rows `kv_indptr[s] .. kv_indptr[s + 1]` of `k_cache`/`v_cache` (`[total_slots, head_dim]`), of which
the first `kv_lens[s]` are valid. Query head `q` of a sequence reads KV head `q // group_size` (HF head order).
Like the kernels, every function clamps `kv_lens` to `[0, capacity]` and never touches a row outside its segment
(or outside the buffer).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _segment_bounds(
    kv_indptr: torch.Tensor, kv_lens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int64 `[num_segments]` first rows, capacities (`>= 0`) and lengths clamped to `[0, capacity]`, on the device
    (no host sync): what every kernel trusts of `kv_indptr` and `kv_lens`."""
    start = kv_indptr[:-1].to(torch.int64)
    capacity = (kv_indptr[1:].to(torch.int64) - start).clamp_min(0)
    length = torch.minimum(kv_lens.to(torch.int64).clamp_min(0), capacity)
    return start, capacity, length


def window_scores_ref(
    q_win: torch.Tensor,
    k: torch.Tensor,
    *,
    window_reduce: str = "mean",
    group_reduce: str = "mean",
    pool: str = "max",
    pool_size: int = 7,
    qo_head_weights: torch.Tensor | None = None,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """Observation-window scores of every prefix token, per KV head: the readable oracle (materialises
    `[heads, w, n]`; `window_scores_chunked` computes the same in bounded memory).

    Args:
        q_win: `[num_qo_heads, w, head_dim]`, the last `w` prompt queries after RoPE.
        k: `[num_kv_heads, n, head_dim]`, all `n` prompt keys after RoPE; `1 <= w <= n`.
        window_reduce: "sum" or "mean" over the `w` window queries.
        group_reduce: "mean", "max" or "sum" over the query heads of each KV head's group.
        pool: "max" or "avg" 1-D pooling, stride 1, padding `pool_size // 2`; avg counts the zero padding.
        pool_size: odd kernel size; 1 means no pooling.
        qo_head_weights: optional `[num_qo_heads]` factors on each query head's scores before the group reduce.
        sm_scale: softmax scale, default `1 / sqrt(head_dim)`.

    Returns:
        `[num_kv_heads, n - w]` fp32 (fp64 for fp64 inputs). Window query `i` sits at position `n - w + i` and
        attends causally to keys `0 .. n - w + i`; every row is normalised over all its keys, window keys
        included, and the window columns are then dropped.
    """
    num_qo_heads, w, head_dim = q_win.shape
    num_kv_heads, n, _ = k.shape
    group = num_qo_heads // num_kv_heads
    dtype = _compute_dtype(q_win, k)
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)

    keys = k.to(dtype).repeat_interleave(group, dim=0)  # [Hq, n, D]
    logits = torch.matmul(q_win.to(dtype), keys.transpose(1, 2)) * scale  # [Hq, w, n]
    query_pos = torch.arange(n - w, n, device=k.device)[:, None]
    key_pos = torch.arange(n, device=k.device)[None, :]
    logits = logits.masked_fill(key_pos > query_pos, float("-inf"))
    probs = torch.softmax(logits, dim=-1)[:, :, : n - w]  # [Hq, w, n - w]
    per_head = probs.sum(dim=1) if window_reduce == "sum" else probs.mean(dim=1)  # [Hq, n - w]
    return _reduce_heads_and_pool(per_head, num_kv_heads, group_reduce, pool, pool_size, qo_head_weights)


WINDOW_KEY_CHUNK = 256  # prefix keys per step of window_scores_chunked (a [heads, w, 256] tile: 1 MB fp32 at 32 x 32)


def window_scores_chunked(
    q_win: torch.Tensor,
    k: torch.Tensor,
    *,
    window_reduce: str = "mean",
    group_reduce: str = "mean",
    pool: str = "max",
    pool_size: int = 7,
    qo_head_weights: torch.Tensor | None = None,
    sm_scale: float | None = None,
    key_chunk: int = WINDOW_KEY_CHUNK,
) -> torch.Tensor:
    """`window_scores_ref`'s result in bounded memory: the torch backend's scorer (CPU default).

    Same arguments and result as `window_scores_ref`, computed the way the Triton kernel does it: pass 1 gets the
    log-sum-exp of every window row (the causal window block, then the prefix keys `key_chunk` at a time), pass 2
    sums each chunk's probabilities over the window. The largest intermediate is `[num_kv_heads, group * w,
    key_chunk]`; each query group multiplies its own KV head's keys (no per-query-head copy of K).
    """
    num_qo_heads, w, head_dim = q_win.shape
    num_kv_heads, n, _ = k.shape
    group, m = num_qo_heads // num_kv_heads, n - w
    dtype = _compute_dtype(q_win, k)
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    queries = q_win.to(dtype).reshape(num_kv_heads, group * w, head_dim) * scale  # row g * w + i: head g, query i

    def logits(first: int, last: int) -> torch.Tensor:  # [num_kv_heads, group * w, last - first]
        return torch.matmul(queries, k[:, first:last].to(dtype).transpose(1, 2))

    causal = torch.arange(w, device=k.device)[None, :] > torch.arange(w, device=k.device)[:, None]  # [w, w]
    window_logits = logits(m, n).view(num_kv_heads, group, w, w).masked_fill(causal, float("-inf"))
    lse = torch.logsumexp(window_logits, dim=-1).view(num_kv_heads, group * w)
    chunks = [(first, min(first + key_chunk, m)) for first in range(0, m, key_chunk)]
    for first, last in chunks:
        lse = torch.logaddexp(lse, torch.logsumexp(logits(first, last), dim=-1))

    per_head = torch.empty(num_kv_heads, group, m, dtype=dtype, device=k.device)
    for first, last in chunks:
        probs = torch.exp(logits(first, last) - lse[:, :, None])
        per_head[:, :, first:last] = probs.view(num_kv_heads, group, w, last - first).sum(dim=2)
    if window_reduce == "mean":
        per_head /= w
    return _reduce_heads_and_pool(per_head.view(num_qo_heads, m), num_kv_heads, group_reduce, pool, pool_size,
                                  qo_head_weights)


def _reduce_heads_and_pool(
    per_head: torch.Tensor,
    num_kv_heads: int,
    group_reduce: str,
    pool: str,
    pool_size: int,
    qo_head_weights: torch.Tensor | None,
) -> torch.Tensor:
    """`[num_qo_heads, m]` window-reduced scores -> weighted, reduced over each KV head's group, pooled:
    `[num_kv_heads, m]`."""
    num_qo_heads, m = per_head.shape
    if qo_head_weights is not None:
        per_head = per_head * qo_head_weights.to(per_head.dtype)[:, None]
    grouped = per_head.view(num_kv_heads, num_qo_heads // num_kv_heads, m)
    if group_reduce == "mean":
        scores = grouped.mean(dim=1)
    elif group_reduce == "max":
        scores = grouped.amax(dim=1)
    else:
        scores = grouped.sum(dim=1)
    if pool_size > 1 and m > 0:
        pool_fn = F.max_pool1d if pool == "max" else F.avg_pool1d
        scores = pool_fn(scores[:, None, :], pool_size, stride=1, padding=pool_size // 2)[:, 0, :]
    return scores


def select_and_pack_ref(
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
    """Keep each source segment's top-`budgets[i]` prefix tokens plus its window, packed into the cache in place.

    Args:
        scores: `[num_src, m]` fp32 pooled scores of the `m = n - w` prefix tokens of each source segment.
        budgets: `[num_src]` int32/int64, prefix tokens to keep per segment, `0 <= budgets[i] <= m`.
        k_src, v_src: `[num_src, n, head_dim]`, the full prompt keys/values; the last `w = n - m` are the window.
        k_cache, v_cache: `[total_slots, head_dim]`, written in place.
        kv_indptr: `[num_segments + 1]` int32/int64 row offsets; kv_lens: `[num_segments]` int32/int64, set in
            place.
        first_segment: source segment `i` goes to cache segment `first_segment + i`.

    Segment `first_segment + i` receives, from its first row on: the kept prefix tokens in position order, then
    the `w` window tokens; `kv_lens` becomes `budgets[i] + w`. Ties in `scores` go to the lower position.
    Rows past `budgets[i] + w` and all other segments are left untouched. Budgets the launcher would refuse are
    clamped instead: to `[0, m]`, and the packed tokens to the segment's capacity (the first `capacity` of them);
    rows outside the buffer are skipped.
    """
    num_src, m = scores.shape
    n = k_src.shape[1]
    device = scores.device
    budgets = budgets.to(device=device, dtype=torch.int64).clamp(0, m)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # [num_src, m]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(m, device=device).expand(num_src, m).contiguous())
    keep = torch.cat([rank < budgets[:, None], torch.ones(num_src, n - m, dtype=torch.bool, device=device)], dim=1)
    slot = keep.to(torch.int64).cumsum(dim=1) - 1  # [num_src, n] destination slot of each kept token
    segment = torch.arange(first_segment, first_segment + num_src, device=device)
    start, capacity, _ = _segment_bounds(kv_indptr, kv_lens)
    keep &= slot < capacity[segment][:, None]
    rows = start[segment][:, None] + slot  # [num_src, n]
    src_seg, src_pos = (keep & (rows >= 0) & (rows < k_cache.shape[0])).nonzero(as_tuple=True)
    dst = rows[src_seg, src_pos]
    k_cache[dst] = k_src[src_seg, src_pos].to(k_cache.dtype)
    v_cache[dst] = v_src[src_seg, src_pos].to(v_cache.dtype)
    kv_lens[segment] = keep.sum(dim=1).to(kv_lens.dtype)


def append_kv_ref(
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_lens: torch.Tensor,
) -> None:
    """Write one new K/V row per segment at `kv_indptr[s] + kv_lens[s]` and increment `kv_lens`, in place.

    Args:
        k_new, v_new: `[num_segments, head_dim]`, segment `s = b * num_kv_heads + h`.
        k_cache, v_cache: `[total_slots, head_dim]`.
        kv_indptr: `[num_segments + 1]` int32/int64; kv_lens: `[num_segments]` int32/int64.

    The length is first clamped to `[0, capacity]` (negative counts as 0, so the row goes to the segment's start
    and the length becomes 1). A segment whose clamped length is at capacity is left unchanged, stored length
    included: the caller reserves decode headroom. A row outside the buffer is never written (that segment is
    left unchanged).
    """
    start, capacity, length = _segment_bounds(kv_indptr, kv_lens)
    rows = start + length
    fits = (length < capacity) & (rows >= 0) & (rows < k_cache.shape[0])
    k_cache[rows[fits]] = k_new[fits].to(k_cache.dtype)
    v_cache[rows[fits]] = v_new[fits].to(v_cache.dtype)
    kv_lens.copy_(torch.where(fits, length + 1, kv_lens.to(torch.int64)))


def ragged_decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_lens: torch.Tensor,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """One decode query per sequence attending to its ragged per-KV-head segments.

    Args:
        q: `[batch, num_qo_heads, head_dim]`.
        k_cache, v_cache: `[total_slots, head_dim]`.
        kv_indptr: `[batch * num_kv_heads + 1]` int32/int64; kv_lens: `[batch * num_kv_heads]` int32/int64.
        sm_scale: default `1 / sqrt(head_dim)`.

    Returns:
        `[batch, num_qo_heads, head_dim]` in `q.dtype`; a query head whose segment is empty gets zeros.

    Lengths are clamped to `[0, capacity]` (a negative length reads nothing), so only rows
    `kv_indptr[s] .. kv_indptr[s + 1]` are read; rows outside the buffer are skipped.

    Works on the valid rows only (no padding to the longest segment), so its cost follows the tokens kept: a
    batch with one long segment among short ones costs what its rows cost.
    """
    batch, num_qo_heads, head_dim = q.shape
    num_segments = kv_lens.numel()
    group = num_qo_heads // (num_segments // batch) if num_segments else 1
    dtype = _compute_dtype(q, k_cache, v_cache)
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)

    start, _, lens = _segment_bounds(kv_indptr, kv_lens)
    segment = torch.repeat_interleave(torch.arange(num_segments, device=q.device), lens)  # [T] owner of each row
    first_of_segment = torch.cumsum(lens, dim=0) - lens  # position of each segment's first row among the T
    offset = torch.arange(segment.numel(), device=q.device) - first_of_segment[segment]
    rows = start[segment] + offset  # [T] rows of the cache
    in_buffer = (rows >= 0) & (rows < k_cache.shape[0])
    segment, rows = segment[in_buffer], rows[in_buffer]
    keys = k_cache[rows].to(dtype)  # [T, D]
    values = v_cache[rows].to(dtype)

    queries = q.to(dtype).reshape(num_segments, group, head_dim)
    logits = torch.einsum("tgd,td->tg", queries[segment], keys) * scale  # [T, G]
    row_max = torch.full((num_segments, group), float("-inf"), dtype=dtype, device=q.device)
    row_max = row_max.scatter_reduce(0, segment[:, None].expand(-1, group), logits, "amax")  # [S, G]
    weights = torch.exp(logits - row_max[segment])  # [T, G]
    denominator = torch.zeros(num_segments, group, dtype=dtype, device=q.device).index_add(0, segment, weights)
    numerator = torch.zeros(num_segments, group, head_dim, dtype=dtype, device=q.device)
    numerator = numerator.index_add(0, segment, weights[:, :, None] * values[:, None, :])  # [S, G, D]
    out = torch.where(denominator[..., None] > 0, numerator / denominator[..., None], 0.0)  # empty segment: 0
    return out.reshape(batch, num_qo_heads, head_dim).to(q.dtype)
