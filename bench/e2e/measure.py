"""Timed end-to-end runs at serving batch sizes, and the most sequences that fit in memory.

Engine rows (`engine_source` once per (prompt, method, kv_size), then `engine_row` per (batch, mode)):
  ttft_ms        one prompt's prefill + compression + first token (batch 1, synchronised; shared by the rows that
                 copy this prefill into their batch, `fill.replicate_prefill`);
  ms/token       `Decoded.seconds / steps` of `ModelRunner.decode` (graph capture excluded, reported as capture_ms);
  tok/s          tokens per second summed over the batch: `batch * steps / seconds`;
  peak_bytes     `max_memory_allocated` over the prefill and the decode (weights included); decode_peak_bytes: over
                 the copy into the batch and the decode only (what grows with the batch).
transformers rows (`hf_row`): `generate` (SDPA, greedy, auto-compile off) on a `StaticCache` or `DynamicCache`
that already holds `n - 1` prompt tokens for every sequence (`fill.prefilled_hf_cache`): ms/token = wall time of
generate / new_tokens (its first forward runs the last prompt token against the cache, as costly as a decode step);
ttft_ms = `generate(max_new_tokens=1)` of the batch-1 prompt with that cache kind, prefill included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from raggedkv.engine.cuda_graph import GRAPH
from raggedkv.engine.hf import ATTENTION_NAME
from raggedkv.engine.methods import Method
from raggedkv.engine.models import attention_implementation
from raggedkv.engine.runner import ModelRunner, Prefilled, SamplingParams, Variant

from .fill import prefilled_hf_cache, replicate_prefill

MEMORY_FRACTION = 0.95  # of the device's memory a computed maximum batch may plan to use


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


@dataclass
class EngineSource:
    """One prompt prefilled and compressed at batch 1: what every batch of its (method, kv_size) copies."""

    state: Prefilled
    first: torch.Tensor  # int64 [1], the first generated token
    ttft_s: float
    peak_bytes: int | None


@torch.inference_mode()
def engine_source(runner: ModelRunner, ids: list[int], method: Method, kv_size: int | None, new_tokens: int,
                  device: torch.device) -> EngineSource:
    """Prefill `ids` once with `method` at `kv_size` (cache headroom for `new_tokens`), timed to the first token."""
    _reset_peak(device)
    _sync(device)
    start = time.perf_counter()
    with attention_implementation(runner.model, ATTENTION_NAME):
        state = runner.prefill([ids], [Variant(0, method, kv_size)], new_tokens)
    first = state.logits.argmax(dim=-1)
    _sync(device)
    return EngineSource(state, first, time.perf_counter() - start, _peak(device))


@torch.inference_mode()
def engine_row(runner: ModelRunner, source: EngineSource, batch: int, new_tokens: int, device: torch.device,
               keep_tokens: bool) -> dict[str, Any]:
    """Copy `source` into `batch` sequences and decode `new_tokens` greedy tokens with `runner` (its mode)."""
    _reset_peak(device)
    state = replicate_prefill(source.state, batch)
    first = source.first.expand(batch).contiguous()
    with attention_implementation(runner.model, ATTENTION_NAME):
        decoded = runner.decode(state, first, SamplingParams(new_tokens), None)
    decode_peak = _peak(device)
    tokens = decoded.tokens
    memory = source.state.memory
    row = {
        "ttft_ms": source.ttft_s * 1e3, "generated": tokens.shape[1], "steps": decoded.steps,
        "ms_per_token": decoded.seconds / decoded.steps * 1e3 if decoded.steps else None,
        "decode_tok_s": batch * decoded.steps / decoded.seconds if decoded.steps else None,
        "capture_ms": decoded.capture_seconds * 1e3 if decoded.mode == GRAPH else None, "mode": decoded.mode,
        "peak_bytes": None if decode_peak is None else max(decode_peak, source.peak_bytes),
        "decode_peak_bytes": decode_peak,
        "kv_bytes": int(memory.valid.sum()), "kv_alloc_bytes": int(memory.allocated.sum()),
        "rows_identical": bool((tokens == tokens[:1]).all()),
    }
    if keep_tokens:
        row["tokens"] = tokens[0].tolist()
    return row


@torch.inference_mode()
def hf_ttft(model, ids: torch.Tensor, kind: str, device: torch.device) -> float:
    """Seconds of transformers' `generate(max_new_tokens=1)` on the `[1, n]` prompt with its `kind` cache."""
    _sync(device)
    start = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                   cache_implementation="static" if kind == "static" else None, disable_compile=True)
    _sync(device)
    return time.perf_counter() - start


@torch.inference_mode()
def hf_row(model, ids: torch.Tensor, batch: int, new_tokens: int, kind: str, ttft_s: float, device: torch.device,
           keep_tokens: bool) -> dict[str, Any]:
    """transformers `generate` of `new_tokens` for `batch` copies of the prompt, its `kind` cache prefilled."""
    _reset_peak(device)
    cache = prefilled_hf_cache(model, ids, batch, new_tokens, kind)
    n = ids.shape[1]
    batch_ids = ids.expand(batch, n)
    _sync(device)
    start = time.perf_counter()
    out = model.generate(batch_ids, attention_mask=torch.ones_like(batch_ids), past_key_values=cache,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, disable_compile=True)
    _sync(device)
    seconds = time.perf_counter() - start
    tokens = out[:, n:]
    shape = model.config
    head_dim = getattr(shape, "head_dim", None) or shape.hidden_size // shape.num_attention_heads
    kv_bytes = 2 * shape.num_hidden_layers * shape.num_key_value_heads * head_dim * n * model.dtype.itemsize
    row = {
        "ttft_ms": ttft_s * 1e3, "generated": tokens.shape[1], "steps": tokens.shape[1],
        "ms_per_token": seconds / tokens.shape[1] * 1e3, "decode_tok_s": batch * tokens.shape[1] / seconds,
        "capture_ms": None, "mode": "eager", "peak_bytes": _peak(device), "decode_peak_bytes": _peak(device),
        "kv_bytes": kv_bytes, "kv_alloc_bytes": kv_bytes * (n + new_tokens) // n if kind == "static" else None,
        "rows_identical": bool((tokens == tokens[:1]).all()),
    }
    if keep_tokens:
        row["tokens"] = tokens[0].tolist()
    return row


def max_batch(rows: list[dict[str, Any]], total_bytes: int) -> dict[str, Any] | None:
    """The most sequences of one (prompt, provider, kv_size) that fit in `MEMORY_FRACTION` of `total_bytes`,
    computed from its measured rows: bytes per sequence = the slope of `decode_peak_bytes` between the two largest
    measured batches (at least the KV bytes a sequence reserves), plus the rest of the larger batch's peak (weights,
    fixed activations). None without two measured batches or a measured peak."""
    measured = sorted({r["config"]["batch"]: r for r in rows if r.get("check") == "ok" and r.get("decode_peak_bytes")
                       }.items())
    if len(measured) < 2:
        return None
    (b1, r1), (b2, r2) = measured[-2], measured[-1]
    kv_per_seq = (r2.get("kv_alloc_bytes") or r2["kv_bytes"])
    per_seq = max((r2["decode_peak_bytes"] - r1["decode_peak_bytes"]) / (b2 - b1), kv_per_seq)
    fixed = r2["decode_peak_bytes"] - b2 * per_seq
    fits = int((MEMORY_FRACTION * total_bytes - fixed) // per_seq)
    return {"max_batch": max(fits, 0), "bytes_per_seq": int(per_seq), "fixed_bytes": int(fixed),
            "from_batches": [b1, b2], "how": f"computed: peak slope between batch {b1} and {b2}, "
                                             f"{MEMORY_FRACTION:.0%} of {total_bytes / 2**30:.0f} GiB"}
