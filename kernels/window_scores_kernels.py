"""The Triton kernels of `window_scores` (launched by `kernels/window_scores.py`, which documents what they compute).

Pass 1 `_window_lse_kernel` and pass 2 `_window_scores_kernel` take an `EXACT` constexpr: True upcasts the loaded
tiles to fp32 and uses IEEE fp32 dots (`input_precision="ieee"`; the GPU's TF32 default would cost ~1e-3
relative); False feeds the fp16/bf16 tiles to tensor-core `tl.dot` in their own dtype with fp32 accumulation. The
logits, log-sum-exp (log2 domain, `log2(e)` folded into `qk_scale`), `exp2` and column sums are fp32 on both paths.
No probability ever enters a dot: pass 2 computes the logits transposed (keys x window rows) and sums the
probabilities along each key's row in fp32, so there is no P to round to half precision.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _lse_step(m_i, l_i, s, qk_scale):
    """One online log-sum-exp step (log2 domain, fp32) over a `[BLOCK_M, BLOCK_N]` tile of raw logits `s`
    (masked entries -inf); returns the new running max `m_i` and sum `l_i`, both `[BLOCK_M]`."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
    l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s * qk_scale - m_new[:, None]), axis=1)
    return m_new, l_i


@triton.jit
def _window_lse_kernel(
    q_ptr, k_ptr, lse_ptr,
    n, w, group_size, qk_scale,
    stride_q_head, stride_q_row, stride_k_head, stride_k_tok,
    HEAD_DIM: tl.constexpr, EXACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # q_ptr: [num_qo_heads, w, HEAD_DIM]; k_ptr: [num_kv_heads, n, HEAD_DIM]; both last-dim contiguous.
    # lse_ptr: [num_qo_heads, w] fp32 contiguous, log2 domain: log2(sum_j exp2(qk_scale * q_i . k_j)), j <= n-w+i.
    # Program (kv_head, tile): BLOCK_M of the group's flattened rows r = g * w + i, over all n keys.
    # EXACT: tiles upcast to fp32 and IEEE fp32 dots; else tensor-core dots in the inputs' dtype, fp32 accumulate.
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_D >= 16, "tl.dot needs M, N, K >= 16")
    kv_head = tl.program_id(0).to(tl.int64)
    r = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = r < group_size * w
    qo_head = kv_head * group_size + r // w
    i = r % w
    q_pos = n - w + i  # padding rows get a real position, so every row sees key 0 and stays finite
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM

    q_offs = qo_head[:, None] * stride_q_head + i[:, None] * stride_q_row + d[None, :]
    q = tl.load(q_ptr + q_offs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if EXACT:
        q = q.to(tl.float32)

    # Online log-sum-exp over the keys. Keys 0 .. n - w are seen by every window row: whole tiles of them need
    # no mask. The rest (at most w + BLOCK_N - 1 keys) take the causal mask, which also hides k_pos >= n.
    # Key 0 is in the first tile, so m_i is finite after it.
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    k_ptrs = k_ptr + kv_head * stride_k_head + tl.arange(0, BLOCK_N)[:, None] * stride_k_tok + d[None, :]
    shared_end = (n - w + 1) // BLOCK_N * BLOCK_N
    for start in range(0, shared_end, BLOCK_N):
        k = tl.load(k_ptrs + start * stride_k_tok, mask=d_ok[None, :], other=0.0)
        if EXACT:
            k = k.to(tl.float32)
        m_i, l_i = _lse_step(m_i, l_i, tl.dot(q, tl.trans(k), input_precision="ieee"), qk_scale)
    for start in range(shared_end, n, BLOCK_N):
        k_pos = start + tl.arange(0, BLOCK_N)
        k = tl.load(k_ptrs + start * stride_k_tok, mask=(k_pos < n)[:, None] & d_ok[None, :], other=0.0)
        if EXACT:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
        s = tl.where(k_pos[None, :] <= q_pos[:, None], s, float("-inf"))
        m_i, l_i = _lse_step(m_i, l_i, s, qk_scale)

    tl.store(lse_ptr + qo_head * w + i, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit
def _window_scores_kernel(
    q_ptr, k_ptr, lse_ptr, weights_ptr, out_ptr,
    m, w, qk_scale, window_scale, group_scale,
    stride_q_head, stride_q_row, stride_k_head, stride_k_tok,
    HEAD_DIM: tl.constexpr, EXACT: tl.constexpr, HAS_WEIGHTS: tl.constexpr, GROUP_REDUCE: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # q_ptr: [num_qo_heads, w, HEAD_DIM]; k_ptr: [num_kv_heads, n, HEAD_DIM]; lse_ptr: [num_qo_heads, w] fp32
    # (log2 domain); weights_ptr: [num_qo_heads] (read only if HAS_WEIGHTS); out_ptr: [num_kv_heads, m] fp32
    # pre-pool scores, m = n - w. GROUP_REDUCE: 0 mean (sum then * group_scale), 1 max, 2 sum.
    # Program (kv_head, key block): BLOCK_N prefix keys, loaded once, against all w rows of every group head.
    # The logits are computed transposed, keys x rows = K.Q^T, so the column sum over the window is a row
    # reduction inside each thread's fragment of the dot output. EXACT as in _window_lse_kernel.
    # GROUP_SIZE (query heads per KV head) is a constexpr: with a runtime trip count the head loop has a zero-trip
    # path, and ptxas spilled a value live across it on sm_80 (Triton 3.6 and 3.9, CompressKV's settings); a
    # constant trip count >= 1 removes that path. One compile per model group size.
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_D >= 16, "tl.dot needs M, N, K >= 16")
    kv_head = tl.program_id(0).to(tl.int64)
    k_pos = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ok = k_pos < m
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM

    k_offs = kv_head * stride_k_head + k_pos[:, None] * stride_k_tok + d[None, :]
    k = tl.load(k_ptr + k_offs, mask=k_ok[:, None] & d_ok[None, :], other=0.0)
    if EXACT:
        k = k.to(tl.float32)

    if GROUP_REDUCE == 1:
        acc = tl.full([BLOCK_N], float("-inf"), tl.float32)
    else:
        acc = tl.zeros([BLOCK_N], tl.float32)
    for g in range(GROUP_SIZE):
        qo_head = kv_head * GROUP_SIZE + g
        # Column sums of this head's window probabilities, one row tile at a time (prefix keys are seen by every
        # window row: no causal mask; padding rows get lse = +inf, so p = 0).
        col = tl.zeros([BLOCK_N], tl.float32)
        for row_start in range(0, w, BLOCK_M):
            i = row_start + tl.arange(0, BLOCK_M)
            i_ok = i < w
            q_offs = qo_head * stride_q_head + i[:, None] * stride_q_row + d[None, :]
            q = tl.load(q_ptr + q_offs, mask=i_ok[:, None] & d_ok[None, :], other=0.0)
            if EXACT:
                q = q.to(tl.float32)
            lse = tl.load(lse_ptr + qo_head * w + i, mask=i_ok, other=float("inf"))
            s_t = tl.dot(k, tl.trans(q), input_precision="ieee")  # [BLOCK_N, BLOCK_M] fp32
            col += tl.sum(tl.exp2(s_t * qk_scale - lse[None, :]), axis=1)
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
