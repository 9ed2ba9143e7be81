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

Nothing with both a window and a prompt-length dimension is ever allocated. `_window_scores_launches` describes the
launches (a pure function of shapes, dtypes and strides, also on `meta` tensors: the kernel resource report compiles
exactly these); three of them (two with `pool_size == 1`, none when `w == n`), kernels in `window_scores_kernels.py`:
    1. `_window_lse_kernel`, grid `(num_kv_heads, cdiv(group_size * w, BLOCK_M))`: the log2-domain log-sum-exp
       of every (query head, window row) over its causal keys, fp32 `[num_qo_heads, w]`. A program owns a tile of
       the group's flattened (head, row) pairs, so each key tile is read once for the whole group; whole tiles of
       the keys every row sees (positions `0 .. n - w`) run unmasked, the last `< w + BLOCK_N` keys take the mask.
    2. `_window_scores_kernel`, grid `(num_kv_heads, cdiv(n - w, BLOCK_N))`, key-block stationary: a program
       loads one tile of prefix keys once, loops over the group's query heads and window row tiles, computes the
       logits transposed (`K.Q^T`, keys x rows), recomputes `p = exp2(s - lse)` and sums it along each key's row
       into the pre-pool scores fp32 `[num_kv_heads, n - w]` (no atomics: each program owns its columns; prefix
       keys are seen by every window row, so no mask).
    3. `_pool1d_kernel`, grid `(num_kv_heads, cdiv(n - w, BLOCK_POOL))`: the 1-D pooling.
Block sizes, warps and stages come from `_lse_config`/`_scores_config` (pure functions of the shape and path, no
autotuning). At the engine's shapes (Llama-3-8B/Mistral-7B fp16/bf16, SmolLM2-135M bf16/fp32; windows 8/32/64;
prompts up to 32K) both passes compile without spills for sm_80 and sm_90 under Triton 3.6 and 3.9 (pass 2 takes
the group size as a constexpr for that, see its kernel), and the tensor-core path issues HMMA (sm_80) / HMMA or
wgmma (sm_90) instructions.

Numerics: two paths, chosen by `_is_exact`.
- Tensor-core path (q_win and k both fp16, or both bf16 off the CPU): tiles load in their own dtype and feed
  `tl.dot` with fp32 accumulation. A product of two half-precision numbers is exact in fp32, so the logits carry
  only fp32 accumulation error; no probability ever enters a dot (pass 2 sums them in fp32 along the rows of the
  transposed logits), so there is no P to round or split into halves.
- Exact path (an fp32 input, q_win and k of different dtypes, or bf16 on the CPU, where the Triton interpreter's
  bf16 arithmetic is wrong): tiles upcast to fp32 right after loading, fp32 `tl.dot` with `input_precision="ieee"`
  (the GPU's TF32 default would cost ~1e-3 relative).
On both, logits, log-sum-exp, probabilities and sums are fp32, with `exp2` and `log2(e)` folded into the scale.
Inputs may be fp16, bf16 or fp32; any head_dim (padded to a power of two >= 16 and masked).

Tested under the Triton interpreter (CPU) against the fp64 reference (tolerances derived in
`tests/test_window_scores.py`: 1e-5 exact path, 5e-5 tensor-core path; measured max error at head_dim 128:
1.7e-6 fp32, 1.1e-6 fp16). The tensor-core path is covered there with fp16 inputs; bf16 tensor-core dots are
covered by the kernel resource report's ahead-of-time compile and by the same tests on a GPU; the kernels have not
yet run on a GPU.
Not supported: batched sequences in one call (call it per sequence), fp64/fp8 inputs, a precomputed LSE from
the prefill attention, autograd. Performance note (GPU): pass 1 is not split over keys, so long prompts run it on
`num_kv_heads * cdiv(group_size * w, 64)` programs (16 for Llama-3-8B at w = 32); a key split with an LSE merge
in pass 2 is the next step.
"""

from __future__ import annotations

import math

import torch
import triton

from ._utils import FLOAT_DTYPES, Launch, check_choice, check_kernel_device, check_tensor, next_power_of_2
from .window_scores_kernels import _pool1d_kernel, _window_lse_kernel, _window_scores_kernel

WINDOW_REDUCES = ("sum", "mean")
GROUP_REDUCES = ("mean", "max", "sum")
POOLS = ("max", "avg")

BLOCK_POOL = 256  # scores per pooling program
_GROUP_REDUCE_CODE = {"mean": 0, "max": 1, "sum": 2}
_LOG2E = 1.4426950408889634


def _is_exact(q_win: torch.Tensor, k: torch.Tensor) -> bool:
    """True for the exact path (tiles upcast to fp32, IEEE fp32 dots): an fp32 input, q_win and k of different
    dtypes, or bf16 on the CPU (the Triton interpreter's bf16 arithmetic is wrong; loading and upcasting is right).
    False for the tensor-core path: both inputs fp16, or both bf16 on a GPU (or `meta`, as the report compiles)."""
    if q_win.dtype != k.dtype or k.dtype == torch.float32:
        return True
    return k.dtype == torch.bfloat16 and k.device.type == "cpu"


def _head_dim_block(head_dim: int) -> int:
    """The head_dim tile: the next power of two, at least 16 (the GPU's minimum K of `tl.dot`)."""
    return max(16, next_power_of_2(head_dim))


def _lse_config(rows: int, exact: bool) -> tuple[int, int, int, int]:
    """`(BLOCK_M, BLOCK_N, num_warps, num_stages)` of pass 1 for `rows = group_size * w` window rows.

    Tensor cores: up to 64 rows by 64 keys, 8 warps, 3 stages. Pass 1 has few programs on long prompts (one per
    KV head and row tile), so each SM holds about one: 8 warps hide more latency than 4 and need fewer registers
    per thread (sm_80: 95 instead of 148). Exact path: 32 x 32 fp32 tiles, whose FMA dot fits without spilling.
    """
    if exact:
        return min(32, max(16, next_power_of_2(rows))), 32, 4, 2
    return min(64, max(16, next_power_of_2(rows))), 64, 8, 3


def _scores_config(w: int, exact: bool) -> tuple[int, int, int, int]:
    """`(BLOCK_M, BLOCK_N, num_warps, num_stages)` of pass 2: BLOCK_N prefix keys per program (the M of the
    transposed dot), BLOCK_M window rows per step. Tensor cores: 64 keys, up to 64 rows, 8 warps (4 for a 16-row
    tile), 1 stage: the row loop runs once per head for `w <= 64`, so there is nothing to pipeline, and the many
    programs hide load latency (2 stages only cost shared memory, and at SmolLM2's w = 64 on sm_80 a spill).
    Exact path: 32 keys, up to 32 rows, 4 warps, 2 stages."""
    if exact:
        return min(32, max(16, next_power_of_2(w))), 32, 4, 2
    block_m = min(64, max(16, next_power_of_2(w)))
    return block_m, 64, 8 if block_m >= 32 else 4, 1


def _window_scores_launches(
    q_win: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    scores: torch.Tensor,
    pooled: torch.Tensor | None,
    *,
    window_reduce: str,
    group_reduce: str,
    pool: str,
    pool_size: int,
    qo_head_weights: torch.Tensor | None,
    sm_scale: float | None,
) -> list[Launch]:
    """The launches of `window_scores` for already validated arguments, in order; a pure function of shapes,
    dtypes, strides and devices (no device reads), so it also works on `device="meta"` tensors.

    Args:
        q_win, k, window_reduce, group_reduce, pool, pool_size, qo_head_weights, sm_scale: as `window_scores`.
        lse: fp32 `[num_qo_heads, w]` contiguous scratch, written by pass 1.
        scores: fp32 `[num_kv_heads, n - w]` contiguous, the pre-pool scores (the result when `pool_size == 1`).
        pooled: fp32 `[num_kv_heads, n - w]` contiguous, the pooled result; None when `pool_size == 1`.

    Returns:
        pass 1, pass 2 and (when `pool_size > 1`) the pooling; empty when `w == n`.
    """
    num_qo_heads, w, head_dim = q_win.shape
    num_kv_heads, n, _ = k.shape
    group_size = num_qo_heads // num_kv_heads
    m = n - w
    if m == 0:
        return []
    exact = _is_exact(q_win, k)
    qk_scale = (sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)) * _LOG2E
    strides = (q_win.stride(0), q_win.stride(1), k.stride(0), k.stride(1))
    shared = {"HEAD_DIM": head_dim, "EXACT": exact, "BLOCK_D": _head_dim_block(head_dim)}

    block_m, block_n, warps, stages = _lse_config(group_size * w, exact)
    launches = [
        Launch(
            _window_lse_kernel,
            (num_kv_heads, triton.cdiv(group_size * w, block_m)),
            (q_win, k, lse, n, w, group_size, qk_scale, *strides),
            dict(shared, BLOCK_M=block_m, BLOCK_N=block_n),
            warps,
            stages,
        )
    ]
    block_m, block_n, warps, stages = _scores_config(w, exact)
    weights = qo_head_weights if qo_head_weights is not None else lse  # placeholder pointer, never read
    launches.append(
        Launch(
            _window_scores_kernel,
            (num_kv_heads, triton.cdiv(m, block_n)),
            (q_win, k, lse, weights, scores, m, w, qk_scale,
             1.0 / w if window_reduce == "mean" else 1.0, 1.0 / group_size, *strides),
            dict(shared, HAS_WEIGHTS=qo_head_weights is not None, GROUP_REDUCE=_GROUP_REDUCE_CODE[group_reduce],
                 GROUP_SIZE=group_size, BLOCK_M=block_m, BLOCK_N=block_n),
            warps,
            stages,
        )
    )
    if pool_size > 1:
        launches.append(
            Launch(
                _pool1d_kernel,
                (num_kv_heads, triton.cdiv(m, BLOCK_POOL)),
                (scores, pooled, m, pool_size),
                {"IS_MAX": pool == "max", "BLOCK": BLOCK_POOL},
                4,
                2,
            )
        )
    return launches


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
    num_qo_heads, w, _ = q_win.shape
    num_kv_heads, n, _ = k.shape
    scores = torch.empty((num_kv_heads, n - w), dtype=torch.float32, device=q_win.device)
    lse = torch.empty((num_qo_heads, w), dtype=torch.float32, device=q_win.device)
    pooled = torch.empty_like(scores) if pool_size > 1 else None
    for launch in _window_scores_launches(
        q_win, k, lse, scores, pooled, window_reduce=window_reduce, group_reduce=group_reduce, pool=pool,
        pool_size=pool_size, qo_head_weights=qo_head_weights, sm_scale=sm_scale,
    ):
        launch()
    return pooled if pooled is not None else scores
