"""The shipped configurations: the engine's model shapes, dtypes and call patterns, as `Launch` lists.

Every launch comes from the launcher's own pure `_<name>_launches(...)` function called with `device="meta"`
tensors laid out as the engine lays them out (`engine/cache.py`, `engine/compress.py`, `engine/hf.py`):
    K/V cache: one `[2, rows, head_dim]` buffer; a layer's `k_cache`/`v_cache` are row slices of it.
    `kv_indptr`/`kv_lens`: int32 `[num_layers, segments (+1)]`; a layer's are row views, so layer 1's start at
        byte `(segments + 1) * 4`, which is not 16-aligned for 8 or 3 KV heads: the report binds layers 0 and 1
        (a launch of any other layer specialises like one of them) and keeps each distinct compile once.
    decode: `q` `[batch, num_qo_heads, head_dim]` from the model's `[batch, heads, 1, head_dim]` query; capacities
        `kv_size + HEADROOM` per segment; `plan_decode` with the target's SM count (108 on an A100, 132 on an H100).
    scoring: `q_win` `[num_qo_heads, w, head_dim]` contiguous, `k` `[num_kv_heads, n, head_dim]`, per sequence;
        two variants: SnapKV's (mean over the window and group, max pool 7) and CompressKV's (sums, avg pool 7,
        per-query-head weights).
    select-and-pack: one sequence's `[num_kv_heads, n - w]` scores into the cache at `kv_size` tokens per head;
        sequences 0 and 1 of a batch of 2 (`first_segment` 0 is divisible by 16, `num_kv_heads` is not).
    append: one row per segment, `k_new` a `[batch * num_kv_heads, head_dim]` view.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from raggedkv.kernels._utils import Launch

from .occupancy import ArchLimits

# The launcher modules (`raggedkv.kernels.window_scores` is also the name of a function the package exports).
decode, window_scores, select_pack, append = (
    importlib.import_module(f"raggedkv.kernels.{name}") for name in ("decode", "window_scores", "select_pack", "append")
)
META = torch.device("meta")
HEADROOM = 64  # decode rows reserved per segment: the engine's default max_new_tokens
NUM_SMS = {"sm_80": 108, "sm_90": 132}  # A100 SXM, H100 SXM
WINDOWS = (8, 32, 64)
PROMPT_LEN = 32768
DECODE_CASES = ((1, 2048), (8, 2048), (1, PROMPT_LEN), (8, PROMPT_LEN))  # (batch, kv_size): compressed and full
SCORING_VARIANTS = {
    "snapkv": dict(window_reduce="mean", group_reduce="mean", pool="max", pool_size=7, weighted=False),
    "compresskv": dict(window_reduce="sum", group_reduce="sum", pool="avg", pool_size=7, weighted=True),
}
KERNEL_FAMILIES = ("decode", "window_scores", "select_pack", "append")


@dataclass(frozen=True)
class ModelShape:
    """Attention shape of one model family."""

    num_qo_heads: int
    num_kv_heads: int
    head_dim: int


MODELS = {
    "llama": ModelShape(32, 8, 128),  # Llama-3-8B and Mistral-7B
    "smollm2": ModelShape(9, 3, 64),  # SmolLM2-135M
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SHAPES = {  # name -> (model, cache and activation dtype)
    "llama-bf16": ("llama", "bf16"),
    "llama-fp16": ("llama", "fp16"),
    "smollm2-bf16": ("smollm2", "bf16"),
    "smollm2-fp32": ("smollm2", "fp32"),
}


@dataclass(frozen=True)
class Case:
    """One engine call of a launcher: shape name, a short description, and its launches."""

    shape: str
    description: str
    launches: list[Launch]


def _empty(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=META)


def _index_views(model: ModelShape, batch: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer `layer`'s `kv_indptr` `[segments + 1]` and `kv_lens` `[segments]` int32 views (engine layout)."""
    segments = batch * model.num_kv_heads
    return (_empty(2, segments + 1, dtype=torch.int32)[layer], _empty(2, segments, dtype=torch.int32)[layer])


def _cache_views(model: ModelShape, dtype: torch.dtype, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`k_cache`, `v_cache` `[rows, head_dim]`: the two halves of one `[2, rows, head_dim]` buffer."""
    kv = _empty(2, rows, model.head_dim, dtype=dtype)
    return kv[0], kv[1]


def decode_case(model: ModelShape, dtype: torch.dtype, arch: ArchLimits, batch: int, kv_size: int, layer: int
                ) -> tuple[str, list[Launch]]:
    """Launches of one decode step of layer `layer` at `kv_size` kept tokens per segment."""
    segments = batch * model.num_kv_heads
    capacity = kv_size + HEADROOM
    chunk_size, max_chunks = decode.plan_decode([capacity] * segments, num_sms=NUM_SMS[arch.name])
    q = _empty(batch, model.num_qo_heads, model.head_dim, dtype=dtype)
    k_cache, v_cache = _cache_views(model, dtype, segments * capacity)
    kv_indptr, kv_lens = _index_views(model, batch, layer)
    scale = 1.0 / math.sqrt(model.head_dim)  # the model's scaling, as hf.py passes it
    launches = decode._decode_launches(q, k_cache, v_cache, kv_indptr, kv_lens, torch.empty_like(q), sm_scale=scale,
                                       chunk_size=chunk_size, max_chunks=max_chunks)
    return f"batch {batch}, kv_size {kv_size}, chunk {chunk_size} x {max_chunks}, layer {layer}", launches


def scoring_case(model: ModelShape, dtype: torch.dtype, window: int, variant: str) -> tuple[str, list[Launch]]:
    """Launches of one layer's window scores over a `PROMPT_LEN` prompt."""
    options = dict(SCORING_VARIANTS[variant])
    weights = _empty(model.num_qo_heads, dtype=torch.float32) if options.pop("weighted") else None
    q_win = _empty(model.num_qo_heads, window, model.head_dim, dtype=dtype)
    k = _empty(model.num_kv_heads, PROMPT_LEN, model.head_dim, dtype=dtype)
    lse = _empty(model.num_qo_heads, window, dtype=torch.float32)
    scores = _empty(model.num_kv_heads, PROMPT_LEN - window, dtype=torch.float32)
    pooled = torch.empty_like(scores) if options["pool_size"] > 1 else None
    launches = window_scores._window_scores_launches(q_win, k, lse, scores, pooled, qo_head_weights=weights,
                                                     sm_scale=1.0 / math.sqrt(model.head_dim), **options)
    return f"n {PROMPT_LEN}, w {window}, {variant}", launches


def select_pack_case(model: ModelShape, dtype: torch.dtype, window: int, kv_size: int, layer: int, seq: int
                     ) -> tuple[str, list[Launch]]:
    """Launches packing sequence `seq` (of a batch of 2) of a `PROMPT_LEN` prompt into `kv_size` tokens per KV
    head of layer `layer`."""
    heads = model.num_kv_heads
    scores = _empty(heads, PROMPT_LEN - window, dtype=torch.float32)
    budgets = _empty(heads, dtype=torch.int32)
    k_src = _empty(heads, PROMPT_LEN, model.head_dim, dtype=dtype)
    v_src = _empty(heads, PROMPT_LEN, model.head_dim, dtype=dtype)
    k_cache, v_cache = _cache_views(model, dtype, 2 * heads * (kv_size + HEADROOM))
    kv_indptr, kv_lens = _index_views(model, 2, layer)
    launches = select_pack._select_and_pack_launches(scores, budgets, k_src, v_src, k_cache, v_cache, kv_indptr,
                                                     kv_lens, seq * heads)
    return f"n {PROMPT_LEN}, w {window}, kv_size {kv_size}, layer {layer}, seq {seq}", launches


def append_case(model: ModelShape, dtype: torch.dtype, batch: int, kv_size: int, layer: int
                ) -> tuple[str, list[Launch]]:
    """Launches appending one decode token per segment of layer `layer`."""
    segments = batch * model.num_kv_heads
    k_new = _empty(batch, model.num_kv_heads, model.head_dim, dtype=dtype).view(segments, model.head_dim)
    v_new = _empty(batch, model.num_kv_heads, model.head_dim, dtype=dtype).view(segments, model.head_dim)
    k_cache, v_cache = _cache_views(model, dtype, segments * (kv_size + HEADROOM))
    kv_indptr, kv_lens = _index_views(model, batch, layer)
    launches = append._append_kv_launches(k_new, v_new, k_cache, v_cache, kv_indptr, kv_lens)
    return f"batch {batch}, layer {layer}", launches


def shipped_cases(shape: str, arch: ArchLimits, families: tuple[str, ...] = KERNEL_FAMILIES,
                  reduced: bool = False) -> Iterator[Case]:
    """Every shipped engine call of `families` at shape `shape` (a key of SHAPES) on `arch`.

    `reduced` (the test suite's subset): one decode plan with a combine (batch 1, compressed), the SnapKV scoring
    variant at every window, and layer 0 / sequence 0 only: every kernel once per window, about a dozen compiles.
    """
    model_key, dtype_name = SHAPES[shape]
    model, dtype = MODELS[model_key], DTYPES[dtype_name]
    layers, seqs = ((0,), (0,)) if reduced else ((0, 1), (0, 1))
    decode_cases = DECODE_CASES[:1] if reduced else DECODE_CASES
    variants = list(SCORING_VARIANTS)[:1] if reduced else list(SCORING_VARIANTS)
    calls = []
    if "decode" in families:
        calls += [(decode_case, (model, dtype, arch, b, kv, layer))
                  for b, kv in decode_cases for layer in layers]
    if "window_scores" in families:
        calls += [(scoring_case, (model, dtype, w, variant)) for w in WINDOWS for variant in variants]
    if "select_pack" in families:
        calls += [(select_pack_case, (model, dtype, w, 2048, layer, seq))
                  for w in WINDOWS for layer in layers for seq in seqs]
    if "append" in families:
        calls += [(append_case, (model, dtype, b, 2048, layer)) for b in (1, 8) for layer in layers]
    for build, args in calls:
        description, launches = build(*args)
        yield Case(shape, description, launches)
