"""Serving-size batches from one prefill: a prompt prefilled (and compressed) once, its cache copied into every
sequence of the batch. Decode speed and memory do not depend on what the sequences hold, so the bench fills big
batches this way instead of prefilling the same prompt B times (the table says so: `fill` column).

* `replicate_prefill`: the engine's one-sequence `Prefilled` -> a `Prefilled` of `batch` identical sequences, laid
  out exactly as `ModelRunner.prefill` lays out a batch (one region per (layer, sequence), layer-major).
* `prefilled_hf_cache`: transformers' `StaticCache` or `DynamicCache` holding the first `n - 1` prompt tokens for
  `batch` identical sequences, so `generate` on the whole prompt runs one forward of the last token and then
  decodes (what `generate` does with a cache that already holds part of the prompt).
"""

from __future__ import annotations

import dataclasses

import torch

from raggedkv.engine.cache import RaggedKVCache
from raggedkv.engine.hf import RaggedHFCache
from raggedkv.engine.runner import Prefilled

HF_CACHES = ("static", "dynamic")
HF_PROVIDERS = {"hf_static": "static", "hf_dynamic": "dynamic"}  # the bench's full-cache providers -> cache kind


def replicate_prefill(state: Prefilled, batch: int) -> Prefilled:
    """`batch` copies of a one-sequence prefill, in a fresh cache (the source is left untouched, so it can be
    replicated again); decode plans made from the new capacities.

    Raises:
        ValueError: `state` holds more than one sequence, or `batch` < 1.
    """
    source = state.cache
    if source.batch != 1 or batch < 1:
        raise ValueError(f"replicate_prefill takes a one-sequence prefill and batch >= 1, got {source.batch} "
                         f"sequences and batch={batch}")
    heads = source.num_kv_heads
    cache = RaggedKVCache(
        (source.region_rows - heads * source.headroom).repeat(1, batch),
        source.prompt_lens * batch,
        num_kv_heads=heads,
        head_dim=source.head_dim,
        headroom=source.headroom,
        dtype=source.kv.dtype,
        device=source.kv.device,
        backend=source.backend,
    )
    for layer in range(source.num_layers):
        rows = slice(source.layer_start[layer], source.layer_start[layer] + source.layer_rows[layer])
        start = cache.layer_start[layer]
        cache.kv[:, start : start + cache.layer_rows[layer]] = source.kv[:, rows].repeat(1, batch, 1)
    region = torch.tensor(source.layer_rows, dtype=torch.int32, device=source.kv.device)  # [L]: one region each
    shifts = torch.arange(batch, dtype=torch.int32, device=source.kv.device)[None, :, None] * region[:, None, None]
    cache.kv_indptr[:, :-1] = (source.kv_indptr[:, None, :heads] + shifts).reshape(source.num_layers, -1)
    cache.kv_indptr[:, -1] = region * batch
    cache.kv_lens.copy_(source.kv_lens.repeat(1, batch))
    cache.capacities.copy_(source.capacities.repeat(1, batch))
    cache.decode_steps = source.decode_steps
    hf_cache = RaggedHFCache(cache)
    hf_cache.plan_decode()
    return dataclasses.replace(
        state,
        cache=cache,
        hf_cache=hf_cache,
        variants=state.variants * batch,
        prompt_lens=state.prompt_lens * batch,
        logits=state.logits.expand(batch, -1),
        kept=state.kept.expand(batch, -1, -1),
        memory=cache.memory(),
        prefill_seconds=state.prefill_seconds * batch,
        inputs=None,
        graph=None,
    )


@torch.inference_mode()
def prefilled_hf_cache(model, ids: torch.Tensor, batch: int, new_tokens: int, kind: str):
    """transformers' `kind` cache (``"static"``: `StaticCache` sized for the prompt plus `new_tokens`;
    ``"dynamic"``: `DynamicCache`) holding the first `n - 1` tokens of the `[1, n]` prompt `ids` for `batch`
    identical sequences: one forward at batch 1, then the rows copied."""
    from transformers import DynamicCache, StaticCache

    if kind not in HF_CACHES:
        raise ValueError(f"kind={kind!r} is not a transformers cache the bench runs; choose from {HF_CACHES}")
    n = ids.shape[1]
    one = StaticCache(model.config, max_cache_len=n + new_tokens) if kind == "static" else DynamicCache(
        config=model.config)
    model(ids[:, : n - 1], past_key_values=one, use_cache=True, logits_to_keep=1)
    if kind == "dynamic":
        one.batch_repeat_interleave(batch)
        return one
    keys = one.layers[0].keys
    cache = StaticCache(model.config, max_cache_len=n + new_tokens)
    cache.early_initialization(batch, keys.shape[1], keys.shape[3], keys.dtype, keys.device)
    for source, target in zip(one.layers, cache.layers):
        target.keys.copy_(source.keys.expand(batch, -1, -1, -1))
        target.values.copy_(source.values.expand(batch, -1, -1, -1))
        target.cumulative_length.fill_(n - 1)
    return cache
