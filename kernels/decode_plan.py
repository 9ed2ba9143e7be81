"""Decode planning: chunk size and grid from capacities (once per generation), and the stage-1 tile configuration.

`plan_decode(capacities)` returns `(chunk_size, max_chunks)` for `ragged_decode_attention`: split boundaries every
`chunk_size` tokens of a segment, a stage-1 grid of `(num_segments, max_chunks)` programs sized from capacities,
so a CUDA graph captured once stays valid while the lengths grow.

Chunk rule (in `_pick_chunk_size`), with `num_sms` the GPU's SM count:
1. Default regime: the smallest power of two >= 256 whose chunks over all capacities fit `4 * num_sms` programs
   (few, long chunks: less partial traffic and a short combine when the grid is already large).
2. Compressed regime: when that grid would be under two waves (`2 * num_sms` programs), the chunk is halved, down
   to a floor of 64 tokens (two 32-token tiles at head_dim 128), until the grid reaches two waves. Example: batch
   1, 8 KV heads, capacity 2304 (kv_size 2048 + headroom) on 132 SMs: rule 1 gives 256 tokens and 72 programs,
   rule 2 gives 64 tokens and 288 programs, so every SM streams tokens and the busiest SM holds at most 3 chunks.
   A 64-token chunk adds one `[group, head_dim]` fp32 partial (2 KB at Llama-3-8B) per 32 KB of bf16 K/V read,
   about 6% extra traffic, written by stage 1 and read back by the combine.

Stage-1 tile configuration (`stage1_config`, measured by compiling ahead of time for sm_90 and sm_80 and reading
the cubin; see `decode.py`'s docstring for the numbers): 32-token tiles, 4 warps, 2 stages for fp16/bf16 caches
(tensor-core dots); fp32 caches (exact `ieee` dots) the same tile with 8 warps, so no configuration spills.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._utils import next_power_of_2

DEFAULT_CHUNK_SIZE = 256  # rule 1's smallest chunk: 8 tiles of 32 tokens
MIN_CHUNK_SIZE = 64  # rule 2's floor: two 32-token tiles per program
PROGRAMS_PER_SM = 4  # rule 1: at most this many stage-1 programs per SM
MIN_WAVES = 2  # rule 2: aim for at least this many programs per SM
DEFAULT_NUM_SMS = 132  # an H100 SXM, used when no CUDA device is visible (only the chunk choice depends on it)
BLOCK_N = 32  # tokens per stage-1 tile
MIN_DOT_SIZE = 16  # tl.dot needs M, N, K >= 16


def _num_chunks(capacities: Sequence[int], chunk_size: int) -> int:
    return sum(-(-cap // chunk_size) for cap in capacities)


def _pick_chunk_size(capacities: Sequence[int], num_sms: int) -> int:
    """Rule 1 (smallest power of two >= 256 with at most `4 * num_sms` programs), then rule 2 (halve down to 64
    while under `2 * num_sms` programs). Chunks beyond the longest capacity add nothing, so rule 1 stops there."""
    longest = max(capacities, default=0)
    chunk = DEFAULT_CHUNK_SIZE
    while chunk < longest and _num_chunks(capacities, chunk) > PROGRAMS_PER_SM * num_sms:
        chunk *= 2
    while chunk > MIN_CHUNK_SIZE and _num_chunks(capacities, chunk) < MIN_WAVES * num_sms:
        smaller = chunk // 2
        if _num_chunks(capacities, smaller) == _num_chunks(capacities, chunk):  # every segment fits either way
            break
        chunk = smaller
    return chunk


def _pick_block_n(head_dim: int, chunk_size: int) -> int:
    """Tokens per stage-1 tile: 32 (spill-free at every head_dim up to 128 with 4 warps on half caches and 8 warps
    on fp32 ones), never more than the chunk, never below the 16 that `tl.dot` needs."""
    del head_dim  # one tile size fits every shipped head_dim; kept so callers state what the tile depends on
    return max(MIN_DOT_SIZE, min(BLOCK_N, next_power_of_2(chunk_size)))


def stage1_config(head_dim: int, chunk_size: int, exact: bool) -> tuple[int, int, int]:
    """`(BLOCK_N, num_warps, num_stages)` of `_decode_stage1_kernel`; `exact` is the fp32-cache path."""
    return _pick_block_n(head_dim, chunk_size), 8 if exact else 4, 2


def _num_sms(device: torch.device) -> int:
    """SM count of `device` (or of the current CUDA device); DEFAULT_NUM_SMS without CUDA."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return DEFAULT_NUM_SMS


def check_positive_int(name: str, value: object) -> None:
    """Raise ValueError naming `name` unless `value` is an int >= 1 (bool refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int")


def plan_decode(
    capacities: torch.Tensor | Sequence[int],
    *,
    chunk_size: int | None = None,
    num_sms: int | None = None,
) -> tuple[int, int]:
    """Choose `(chunk_size, max_chunks)` for `ragged_decode_attention` once per generation, from capacities.

    Args:
        capacities: `[num_segments]` rows owned by each segment (`SegmentPlan.capacities`, or
            `kv_indptr[1:] - kv_indptr[:-1]`), a tensor (read on the host once: a sync for a GPU tensor) or ints.
        chunk_size: keep this chunk size and only size `max_chunks` for it; default: the module docstring's rule
            (at most `4 * num_sms` programs; smaller chunks, down to 64 tokens, under `2 * num_sms`).
        num_sms: SM count of the target GPU; default: the capacities' CUDA device, else the current CUDA device,
            else 132.

    Returns:
        `(chunk_size, max_chunks)` with `max_chunks = max(1, cdiv(max capacity, chunk_size))`: valid for every
        length the segments can reach, so one captured decode step serves the whole generation.
    """
    if isinstance(capacities, torch.Tensor):
        device = capacities.device
        capacities = capacities.detach().to("cpu", torch.int64).tolist()
    else:
        device = torch.device("cpu")
        capacities = [int(cap) for cap in capacities]
    if any(cap < 0 for cap in capacities):
        raise ValueError(f"capacities must be >= 0, got min {min(capacities)}")
    if chunk_size is None:
        num_sms = _num_sms(device) if num_sms is None else num_sms
        check_positive_int("num_sms", num_sms)
        chunk_size = _pick_chunk_size(capacities, num_sms)
    check_positive_int("chunk_size", chunk_size)
    return chunk_size, max(1, -(-max(capacities, default=0) // chunk_size))
