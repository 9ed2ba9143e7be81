"""Observation-window scores: how much the last `w` prompt queries attend to each earlier token, per KV head.

Layout and shapes:
    q_win `[num_qo_heads, w, head_dim]`: the last `w` prompt queries (after RoPE); window row `i` sits at prompt
        position `n - w + i`. Any strides, last dim contiguous.
    k `[num_kv_heads, n, head_dim]`: all `n` prompt keys (after RoPE). Any strides, last dim contiguous.
    qo_head_weights `[num_qo_heads]` (optional): factors on each query head's scores before the group reduce.
    returns fp32 `[num_kv_heads, n - w]`: one score per prefix token (the window's own columns are dropped).
Query head `q` reads KV head `q // group_size` (HF order), `group_size = num_qo_heads // num_kv_heads`.

Semantics are exactly `reference.window_scores_ref`: every window row is a softmax over all the keys it sees
(causal inside the window), the probabilities of the prefix columns are reduced over the window ("sum"/"mean"),
multiplied by the head weights, reduced over the group's query heads ("mean"/"max"/"sum"), then 1-D pooled with
stride 1 and padding `pool_size // 2` ("max" pads with -inf, "avg" counts the zero padding, like torch's
`max_pool1d`/`avg_pool1d`).

Nothing with both a window and a prompt-length dimension is ever allocated; three launches (two with
`pool_size == 1`, none when `w == n`):
    1. `_window_lse_kernel`, grid `(num_kv_heads, cdiv(group_size * w, BLOCK_M))`: the log2-domain log-sum-exp
       of every (query head, window row) over its causal keys, fp32 `[num_qo_heads, w]`. A program owns a tile of
       the group's flattened (head, row) pairs, so each key tile is read once for the whole group.
    2. `_window_scores_kernel`, grid `(num_kv_heads, cdiv(n - w, BLOCK_N))`, key-block stationary: a program
       loads one tile of prefix keys once, loops over the group's query heads and window row tiles, recomputes
       `p = exp2(s - lse)` and reduces it into the pre-pool scores fp32 `[num_kv_heads, n - w]` (no atomics:
       each program owns its columns; prefix keys are seen by every window row, so no mask).
    3. `_pool1d_kernel`, grid `(num_kv_heads, cdiv(n - w, BLOCK_POOL))`: the 1-D pooling.

Numerics: tiles are upcast to fp32 right after loading (also what makes bf16 right under the Triton
interpreter); logits, log-sum-exp, probabilities and sums are fp32; `exp2` with `log2(e)` folded into the scale;
fp32 `tl.dot` with `input_precision="ieee"` (the GPU's TF32 default would cost ~1e-3 relative). Inputs may be
fp16, bf16 or fp32 (q_win and k need not match); any head_dim (padded to a power of two >= 16 and masked).

Tested under the Triton interpreter (CPU) against the fp64 reference (max error ~2e-7 relative); not yet on a GPU.
Not supported: batched sequences in one call (call it per sequence), fp64/fp8 inputs, a precomputed LSE from
the prefill attention, autograd. Performance notes (GPU): pass 1 is not split over keys, so very long prompts run
it on few programs (a key split with an LSE merge is the next step), and the fp32 "ieee" dots skip tensor cores.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._utils import FLOAT_DTYPES, check_choice, check_kernel_device, check_tensor, next_power_of_2

WINDOW_REDUCES = ("sum", "mean")
GROUP_REDUCES = ("mean", "max", "sum")
POOLS = ("max", "avg")

BLOCK_N = 64  # prefix keys per pass-2 program, and keys per pass-1 loop step
BLOCK_POOL = 256  # scores per pooling program
_GROUP_REDUCE_CODE = {"mean": 0, "max": 1, "sum": 2}
_LOG2E = 1.4426950408889634


@triton.jit
def _window_lse_kernel(
    q_ptr, k_ptr, lse_ptr,
    n, w, group_size, head_dim, qk_scale,
    stride_q_head, stride_q_row, stride_k_head, stride_k_tok,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # q_ptr: [num_qo_heads, w, head_dim]; k_ptr: [num_kv_heads, n, head_dim]; both last-dim contiguous.
    # lse_ptr: [num_qo_heads, w] fp32 contiguous, log2 domain: log2(sum_j exp2(qk_scale * q_i . k_j)), j <= n-w+i.
    # Program (kv_head, tile): BLOCK_M of the group's flattened rows r = g * w + i, over all n keys.
    kv_head = tl.program_id(0).to(tl.int64)
    r = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = r < group_size * w
    qo_head = kv_head * group_size + r // w
    i = r % w
    q_pos = n - w + i  # padding rows get a real position, so every row sees key 0 and stays finite
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim

    # Load the query tile once.
    q_offs = qo_head[:, None] * stride_q_head + i[:, None] * stride_q_row + d[None, :]
    q = tl.load(q_ptr + q_offs, mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)

    # Stream the keys with an online log-sum-exp (key 0 is in the first tile, so m_i is finite after it).
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    k_base = k_ptr + kv_head * stride_k_head
    for start in range(0, n, BLOCK_N):
        k_pos = start + tl.arange(0, BLOCK_N)
        k_offs = k_pos[:, None] * stride_k_tok + d[None, :]
        k = tl.load(k_base + k_offs, mask=(k_pos < n)[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        s = tl.where(k_pos[None, :] <= q_pos[:, None], s, float("-inf"))  # causal; also hides k_pos >= n
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), axis=1)
        m_i = m_new

    tl.store(lse_ptr + qo_head * w + i, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit
def _window_scores_kernel(
    q_ptr, k_ptr, lse_ptr, weights_ptr, out_ptr,
    m, w, group_size, head_dim, qk_scale, window_scale, group_scale,
    stride_q_head, stride_q_row, stride_k_head, stride_k_tok,
    HAS_WEIGHTS: tl.constexpr, GROUP_REDUCE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # q_ptr: [num_qo_heads, w, head_dim]; k_ptr: [num_kv_heads, n, head_dim]; lse_ptr: [num_qo_heads, w] fp32
    # (log2 domain); weights_ptr: [num_qo_heads] (read only if HAS_WEIGHTS); out_ptr: [num_kv_heads, m] fp32
    # pre-pool scores, m = n - w. GROUP_REDUCE: 0 mean (sum then * group_scale), 1 max, 2 sum.
    # Program (kv_head, key block): BLOCK_N prefix keys, loaded once, against all w rows of every group head.
    kv_head = tl.program_id(0).to(tl.int64)
    k_pos = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ok = k_pos < m
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim

    # Load the key tile once.
    k_offs = kv_head * stride_k_head + k_pos[:, None] * stride_k_tok + d[None, :]
    k = tl.load(k_ptr + k_offs, mask=k_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)

    if GROUP_REDUCE == 1:
        acc = tl.full([BLOCK_N], float("-inf"), tl.float32)
    else:
        acc = tl.zeros([BLOCK_N], tl.float32)
    for g in range(group_size):
        qo_head = kv_head * group_size + g
        # Column sums of this head's window probabilities, one row tile at a time.
        col = tl.zeros([BLOCK_N], tl.float32)
        for row_start in range(0, w, BLOCK_M):
            i = row_start + tl.arange(0, BLOCK_M)
            i_ok = i < w
            q_offs = qo_head * stride_q_head + i[:, None] * stride_q_row + d[None, :]
            q = tl.load(q_ptr + q_offs, mask=i_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            lse = tl.load(lse_ptr + qo_head * w + i, mask=i_ok, other=float("inf"))  # padding rows: p = 0
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
            col += tl.sum(tl.exp2(s - lse[:, None]), axis=0)
        # Window reduce, head weight, group reduce.
        col = col * window_scale
        if HAS_WEIGHTS:
            col = col * tl.load(weights_ptr + qo_head).to(tl.float32)
        if GROUP_REDUCE == 1:
            acc = tl.maximum(acc, col)
        else:
            acc += col
    if GROUP_REDUCE == 0:
        acc = acc * group_scale

    tl.store(out_ptr + kv_head * m + k_pos, acc, mask=k_ok)


@triton.jit
def _pool1d_kernel(
    x_ptr, out_ptr, m, pool_size,
    IS_MAX: tl.constexpr, BLOCK: tl.constexpr,
):
    # x_ptr, out_ptr: [num_kv_heads, m] fp32 contiguous. Stride-1 pooling with padding pool_size // 2: max pads
    # with -inf, avg divides by pool_size (zero padding counted). Program (kv_head, block): BLOCK outputs.
    head = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    if IS_MAX:
        acc = tl.full([BLOCK], float("-inf"), tl.float32)
    else:
        acc = tl.zeros([BLOCK], tl.float32)
    for offset in range(pool_size):
        src = j + offset - pool_size // 2
        src_ok = (src >= 0) & (src < m)
        x = tl.load(x_ptr + head * m + src, mask=src_ok, other=0.0)
        if IS_MAX:
            acc = tl.maximum(acc, tl.where(src_ok, x, float("-inf")))
        else:
            acc += x
    if not IS_MAX:
        acc = acc / pool_size
    tl.store(out_ptr + head * m + j, acc, mask=j < m)


def _row_block(rows: int) -> int:
    """Rows per `tl.dot` tile: a power of two in [16, 64] (16 is the GPU's minimum M)."""
    return min(64, max(16, next_power_of_2(rows)))


def _head_dim_block(head_dim: int) -> int:
    """The head_dim tile: the next power of two, at least 16 (the GPU's minimum K of `tl.dot`)."""
    return max(16, next_power_of_2(head_dim))


def _check_args(
    q_win: torch.Tensor,
    k: torch.Tensor,
    window_reduce: str,
    group_reduce: str,
    pool: str,
    pool_size: int,
    qo_head_weights: torch.Tensor | None,
    sm_scale: float | None,
) -> None:
    """Raise TypeError/ValueError naming the first bad argument."""
    check_tensor("q_win", q_win, ndim=3, dtypes=FLOAT_DTYPES, last_dim_contiguous=True)
    check_kernel_device("q_win", q_win)
    check_tensor("k", k, ndim=3, dtypes=FLOAT_DTYPES, device=q_win.device, last_dim_contiguous=True)
    num_qo_heads, w, head_dim = q_win.shape
    num_kv_heads, n, k_head_dim = k.shape
    if head_dim < 1 or k_head_dim != head_dim:
        raise ValueError(f"k has head_dim {k_head_dim} but q_win has head_dim {head_dim}; they must match and be >= 1")
    if num_kv_heads < 1 or num_qo_heads % num_kv_heads:
        raise ValueError(
            f"q_win has {num_qo_heads} query heads, not a positive multiple of k's {num_kv_heads} KV heads"
        )
    if not 1 <= w <= n:
        raise ValueError(f"q_win has a window of w={w} rows; need 1 <= w <= n={n} (k.shape[1])")
    check_choice("window_reduce", window_reduce, WINDOW_REDUCES)
    check_choice("group_reduce", group_reduce, GROUP_REDUCES)
    check_choice("pool", pool, POOLS)
    if not isinstance(pool_size, int) or isinstance(pool_size, bool):
        raise TypeError(f"pool_size must be an int, got {type(pool_size).__name__}")
    if pool_size < 1 or pool_size % 2 == 0:
        raise ValueError(f"pool_size={pool_size} must be odd and >= 1")
    if qo_head_weights is not None:
        check_tensor("qo_head_weights", qo_head_weights, ndim=1, dtypes=FLOAT_DTYPES, device=q_win.device)
        if qo_head_weights.shape[0] != num_qo_heads:
            raise ValueError(
                f"qo_head_weights has {qo_head_weights.shape[0]} entries; need one per query head ({num_qo_heads})"
            )
    if sm_scale is not None:
        if not isinstance(sm_scale, (int, float)) or isinstance(sm_scale, bool):
            raise TypeError(f"sm_scale must be a float or None, got {type(sm_scale).__name__}")
        if not (math.isfinite(sm_scale) and sm_scale > 0):
            raise ValueError(f"sm_scale={sm_scale} must be finite and > 0")


def window_scores(
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
    """Observation-window scores of every prefix token, per KV head, without materialising `[heads, w, n]`.

    Window query `i` (position `n - w + i`) attends causally to keys `0 .. n - w + i`; each row is normalised over
    all of them, then only the `n - w` prefix columns are kept, reduced and pooled (see the module docstring).

    Args:
        q_win: `[num_qo_heads, w, head_dim]` fp16/bf16/fp32, last dim contiguous, `1 <= w <= n`.
        k: `[num_kv_heads, n, head_dim]` fp16/bf16/fp32, last dim contiguous; `num_qo_heads` must be a multiple of
            `num_kv_heads`; query head `q` reads KV head `q // group_size`.
        window_reduce: "sum" or "mean" over the `w` window rows.
        group_reduce: "mean", "max" or "sum" over the query heads of each KV head's group.
        pool: "max" (pads with -inf) or "avg" (divides by `pool_size`, zero padding counted).
        pool_size: odd kernel size >= 1, stride 1, padding `pool_size // 2`; 1 means no pooling.
        qo_head_weights: optional `[num_qo_heads]` fp16/bf16/fp32 factors applied before the group reduce.
        sm_scale: positive softmax scale, default `1 / sqrt(head_dim)`.

    Returns:
        fp32 `[num_kv_heads, n - w]` on q_win's device (empty when `w == n`).

    Raises:
        TypeError: a tensor of the wrong dtype, or a non-int `pool_size` / non-float `sm_scale`.
        ValueError: wrong ndim/device/layout, shapes that disagree, `w` outside `[1, n]`, an unknown reduce or pool,
            an even or non-positive `pool_size`, a non-positive `sm_scale`.

    Not supported: several sequences per call, fp64 inputs, autograd.
    """
    _check_args(q_win, k, window_reduce, group_reduce, pool, pool_size, qo_head_weights, sm_scale)
    num_qo_heads, w, head_dim = q_win.shape
    num_kv_heads, n, _ = k.shape
    group_size = num_qo_heads // num_kv_heads
    m = n - w
    scores = torch.empty((num_kv_heads, m), dtype=torch.float32, device=q_win.device)
    if m == 0:
        return scores

    qk_scale = (sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)) * _LOG2E
    block_d = _head_dim_block(head_dim)
    strides = (q_win.stride(0), q_win.stride(1), k.stride(0), k.stride(1))

    # Pass 1: row log-sum-exp of every (query head, window row).
    lse = torch.empty((num_qo_heads, w), dtype=torch.float32, device=q_win.device)
    block_m = _row_block(group_size * w)
    _window_lse_kernel[(num_kv_heads, triton.cdiv(group_size * w, block_m))](
        q_win, k, lse, n, w, group_size, head_dim, qk_scale, *strides,
        BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_D=block_d, num_warps=4,
    )

    # Pass 2: key-block-stationary column sums, reduced over the window and the group.
    weights = qo_head_weights if qo_head_weights is not None else lse  # placeholder pointer, never read
    _window_scores_kernel[(num_kv_heads, triton.cdiv(m, BLOCK_N))](
        q_win, k, lse, weights, scores, m, w, group_size, head_dim, qk_scale,
        1.0 / w if window_reduce == "mean" else 1.0, 1.0 / group_size, *strides,
        HAS_WEIGHTS=qo_head_weights is not None, GROUP_REDUCE=_GROUP_REDUCE_CODE[group_reduce],
        BLOCK_M=_row_block(w), BLOCK_N=BLOCK_N, BLOCK_D=block_d, num_warps=4,
    )
    if pool_size == 1:
        return scores

    # Pass 3: 1-D pooling along the prefix.
    pooled = torch.empty_like(scores)
    _pool1d_kernel[(num_kv_heads, triton.cdiv(m, BLOCK_POOL))](
        scores, pooled, m, pool_size, IS_MAX=pool == "max", BLOCK=BLOCK_POOL, num_warps=4,
    )
    return pooled
