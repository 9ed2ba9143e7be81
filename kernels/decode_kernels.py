"""Triton kernels of ragged flash-decoding (launched by `decode.py`): stage 1 and the log-sum-exp combine.

Numerics (stage 1), by cache dtype:
- fp32 caches: the exact path. Every dot is fp32 with `input_precision="ieee"` (no TF32); q is upcast to fp32.
- fp16/bf16 caches: K/V tiles stay in their dtype and feed tensor-core `tl.dot` with fp32 accumulation.
  QK^T: q in the cache dtype (products of two fp16/bf16 values are exact in fp32, so the logits are fp32-accurate);
  a q of another dtype (fp32 q on a bf16 cache) is split into high and low halves in the cache dtype, two dots.
  P.V: P (fp32, in [0, 1]) is split into `p_hi = p.to(dt)` and `p_lo = (p - p_hi).to(dt)`, two dots, which leaves
  a relative error of u^2 per weight (u = 2^-8 bf16, 2^-11 fp16) instead of the u of a single cast.
- The online softmax (exp2, `sm_scale * log2(e)` folded in fp32), the running max and sum, the partial outputs,
  their log2-sum-exp and the combine are fp32; the output is cast to q's dtype once, on store.

Measured error of P.V: max over draws of max|out - ref| / max|ref| against the fp64 reference. Torch emulation
of the kernel's roundings (logits from the half operands in fp32, P rounded as the kernel rounds it, fp32
matmuls; head_dim 128, 4 queries, 64/512/2048 tokens, logits of std about 1 and 4, 120 draws per entry), and
the kernel under the Triton interpreter with an fp32 q (q split as well; the fp32 output is not rounded; 1-700
tokens, 12 draws; the interpreter's fp32 -> bf16 conversion truncates instead of rounding):
| P handling | fp16 cache | bf16 cache | interpreter fp16 / bf16 | Llama-3-8B bf16, sm_90: regs, warps/SM, SASS/tile |
|---|---|---|---|---|
| single cast to the cache dtype | 2.6e-4 | 2.4e-3 | 1.1e-4 / 1.5e-3 | 64, 32, 221 |
| split into high + low halves (chosen) | 2.6e-6 | 3.8e-6 | 1.3e-6 / 2.5e-5 | 88, 20, 247 |
| fp32 P.V (the floor of fp32 arithmetic) | 3.6e-6 | 1.7e-6 | - | - |
The split is chosen: it keeps the half-precision path at the fp32 floor, where a single cast would put bf16
outputs at the bound of their own rounding and fp32 outputs of a bf16 cache 200x above fp32 level; its second dot
costs 26 instructions per 32-token tile while the kernel stays memory-bound (`decode.py` gives the numbers).
q of another dtype than the cache (fp32 q): split in two halves it leaves 2^-16 (bf16) of q in the logits,
1.2e-5 measured on a bf16 cache (2.5e-5 under the interpreter) and 5.2e-6 on fp16; a single cast of q would
cost 9.4e-3 on bf16, so q is split too (about 25 more instructions per tile, on that path only).

Interpreter: its bf16 arithmetic is wrong, so on CPU tensors (the only place the interpreter runs) bf16 dots get
`UPCAST_DOTS`: the operands, already rounded to bf16 exactly as on the GPU, go through exact fp32 dots (same
products, fp32 sums). fp16 runs the tensor-core path itself under the interpreter; the bf16 tensor-core code is
covered by the ahead-of-time compile (kernel report) and on a GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _mma(a, b, acc, UPCAST_DOTS: tl.constexpr):
    """acc + a.b with fp32 accumulation: a tensor-core dot in the operands' dtype, or (`UPCAST_DOTS`) an exact
    fp32 dot of the operands upcast, which equals the tensor-core result up to summation order (products of
    fp16/bf16 values are exact in fp32)."""
    if UPCAST_DOTS:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _scores(q_hi, q_lo, k, SPLIT_Q: tl.constexpr, UPCAST_DOTS: tl.constexpr):
    """`[BLOCK_G, BLOCK_N]` fp32 q.k^T, plus the low half of q when q was split (`SPLIT_Q`)."""
    s = _mma(q_hi, tl.trans(k), tl.zeros([q_hi.shape[0], k.shape[0]], tl.float32), UPCAST_DOTS)
    if SPLIT_Q:
        s = _mma(q_lo, tl.trans(k), s, UPCAST_DOTS)
    return s


@triton.jit
def _weighted_values(p, v, acc, SPLIT_P: tl.constexpr, UPCAST_DOTS: tl.constexpr):
    """acc + P.V with `p` `[BLOCK_G, BLOCK_N]` fp32; with `SPLIT_P`, P is split into a high and a low half in
    v's dtype (two dots), which keeps fp32-level accuracy."""
    if SPLIT_P:
        p_hi = p.to(v.dtype)
        p_lo = (p - p_hi.to(tl.float32)).to(v.dtype)
        acc = _mma(p_hi, v, acc, UPCAST_DOTS)
        acc = _mma(p_lo, v, acc, UPCAST_DOTS)
    else:
        acc = _mma(p, v, acc, UPCAST_DOTS)
    return acc


@triton.jit
def _decode_stage1_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    kv_indptr_ptr,
    kv_lens_ptr,
    part_out_ptr,
    part_lse_ptr,
    out_ptr,
    qk_scale,
    num_kv_heads,
    stride_q_b,
    stride_q_h,
    stride_o_b,
    stride_o_h,
    GROUP_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    CHUNK_SIZE: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DIRECT_OUT: tl.constexpr,
    UPCAST_DOTS: tl.constexpr,
):
    # q: [batch, num_qo_heads, HEAD_DIM] (strides stride_q_b, stride_q_h, 1); k_cache, v_cache: [total_slots,
    # HEAD_DIM] contiguous; kv_indptr: [num_segments + 1]; kv_lens: [num_segments] (int32 or int64).
    # part_out: [num_segments, max_chunks, GROUP_SIZE, HEAD_DIM] fp32; part_lse: [num_segments, max_chunks,
    # GROUP_SIZE] fp32 (log2 domain); out: [batch, num_qo_heads, HEAD_DIM] (strides stride_o_b, stride_o_h, 1).
    # Program (s, c) owns tokens c * CHUNK_SIZE .. (c + 1) * CHUNK_SIZE of segment s for its GROUP_SIZE queries.
    tl.static_assert(BLOCK_G >= 16 and BLOCK_N >= 16 and BLOCK_D >= 16, "tl.dot needs M, N, K >= 16")
    # EXACT: fp32 cache, every dot in fp32. Otherwise dots in the cache dtype: q split when its dtype differs,
    # P always split. UPCAST_DOTS (fp32 caches, and bf16 ones under the interpreter) runs those dots in fp32.
    EXACT: tl.constexpr = k_cache_ptr.dtype.element_ty == tl.float32
    SPLIT_Q: tl.constexpr = (not EXACT) and q_ptr.dtype.element_ty != k_cache_ptr.dtype.element_ty
    seg = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    num_chunks = tl.num_programs(1).to(tl.int64)
    seg_start = tl.load(kv_indptr_ptr + seg).to(tl.int64)
    capacity = tl.load(kv_indptr_ptr + seg + 1).to(tl.int64) - seg_start
    seg_len = tl.maximum(tl.minimum(tl.load(kv_lens_ptr + seg).to(tl.int64), capacity), 0)  # never past the segment
    lo = chunk * CHUNK_SIZE
    if not DIRECT_OUT:
        if lo >= seg_len:  # chunk past the segment's valid rows
            return
    hi = tl.minimum(lo + CHUNK_SIZE, seg_len)

    # Load the segment's query group once: rows h * GROUP_SIZE .. of sequence b, padded to BLOCK_G; in the cache
    # dtype for the tensor-core path (split into high and low halves when q's dtype differs), fp32 when EXACT.
    batch_idx = seg // num_kv_heads
    first_head = (seg % num_kv_heads) * GROUP_SIZE
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    gd_mask = (offs_g < GROUP_SIZE)[:, None] & (offs_d < HEAD_DIM)[None, :]
    q_ptrs = q_ptr + batch_idx * stride_q_b + (first_head + offs_g)[:, None] * stride_q_h + offs_d[None, :]
    q = tl.load(q_ptrs, mask=gd_mask, other=0.0)
    compute_dtype = k_cache_ptr.dtype.element_ty
    q_hi = q.to(compute_dtype)
    q_lo = q_hi
    if SPLIT_Q:
        q_lo = (q.to(tl.float32) - q_hi.to(tl.float32)).to(compute_dtype)

    # Stream the chunk in BLOCK_N tiles with an fp32 online softmax in the log2 domain.
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    for tile_start in range(lo, hi, BLOCK_N):
        n_mask = tile_start + offs_n < hi
        nd_mask = n_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
        rows = (seg_start + tile_start + offs_n)[:, None] * HEAD_DIM + offs_d[None, :]
        k = tl.load(k_cache_ptr + rows, mask=nd_mask, other=0.0)
        v = tl.load(v_cache_ptr + rows, mask=nd_mask, other=0.0)
        s = _scores(q_hi, q_lo, k, SPLIT_Q, UPCAST_DOTS) * qk_scale  # [BLOCK_G, BLOCK_N] fp32
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile has at least one valid token
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = _weighted_values(p, v, acc * alpha[:, None], not EXACT, UPCAST_DOTS)
        m_i = m_new

    if DIRECT_OUT:  # single chunk: final output, zeros for an empty segment
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        o_ptrs = out_ptr + batch_idx * stride_o_b + (first_head + offs_g)[:, None] * stride_o_h + offs_d[None, :]
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=gd_mask)
    else:
        item = (seg * num_chunks + chunk) * GROUP_SIZE + offs_g
        tl.store(part_out_ptr + item[:, None] * HEAD_DIM + offs_d[None, :], acc / l_i[:, None], mask=gd_mask)
        tl.store(part_lse_ptr + item, m_i + tl.log2(l_i), mask=offs_g < GROUP_SIZE)


@triton.jit
def _decode_combine_kernel(
    part_out_ptr,
    part_lse_ptr,
    kv_indptr_ptr,
    kv_lens_ptr,
    out_ptr,
    num_kv_heads,
    max_chunks,
    stride_o_b,
    stride_o_h,
    GROUP_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    CHUNK_SIZE: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # part_out: [num_segments, max_chunks, GROUP_SIZE, HEAD_DIM] fp32; part_lse: [num_segments, max_chunks,
    # GROUP_SIZE] fp32 (log2); kv_indptr: [num_segments + 1]; kv_lens: [num_segments]; out: [batch,
    # num_qo_heads, HEAD_DIM]. Program s merges the non-empty chunks of segment s, in chunk order, for its
    # GROUP_SIZE query heads; the length is clamped to the capacity exactly as in stage 1.
    seg = tl.program_id(0).to(tl.int64)
    capacity = tl.load(kv_indptr_ptr + seg + 1).to(tl.int64) - tl.load(kv_indptr_ptr + seg).to(tl.int64)
    seg_len = tl.maximum(tl.minimum(tl.load(kv_lens_ptr + seg).to(tl.int64), capacity), 0)
    num_chunks = tl.minimum(tl.cdiv(seg_len, CHUNK_SIZE), max_chunks)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    g_mask = offs_g < GROUP_SIZE
    gd_mask = g_mask[:, None] & (offs_d < HEAD_DIM)[None, :]

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for chunk in range(num_chunks):
        item = (seg * max_chunks + chunk) * GROUP_SIZE + offs_g
        lse = tl.load(part_lse_ptr + item, mask=g_mask, other=0.0)
        part = tl.load(part_out_ptr + item[:, None] * HEAD_DIM + offs_d[None, :], mask=gd_mask, other=0.0)
        m_new = tl.maximum(m_i, lse)  # finite: every merged chunk is non-empty
        alpha = tl.exp2(m_i - m_new)
        weight = tl.exp2(lse - m_new)
        acc = acc * alpha[:, None] + part * weight[:, None]
        l_i = l_i * alpha + weight
        m_i = m_new

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # empty segment: acc == 0 -> zeros
    batch_idx = seg // num_kv_heads
    first_head = (seg % num_kv_heads) * GROUP_SIZE
    o_ptrs = out_ptr + batch_idx * stride_o_b + (first_head + offs_g)[:, None] * stride_o_h + offs_d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=gd_mask)
