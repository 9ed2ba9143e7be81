"""The e2e bench's batch filling: one prefill copied into a batch decodes like a batch of identical prompts, and
transformers' caches holding n - 1 prompt tokens give `generate`'s own tokens; the largest batch that fits."""

from __future__ import annotations

import pytest
import torch

from bench.e2e.fill import prefilled_hf_cache, replicate_prefill
from bench.e2e.measure import MEMORY_FRACTION, max_batch
from raggedkv.engine.backend import TORCH_BACKEND
from raggedkv.engine.hf import ATTENTION_NAME
from raggedkv.engine.methods import get_method
from raggedkv.engine.models import attention_implementation
from raggedkv.engine.runner import ModelRunner, SamplingParams, Variant
from tests.engine_helpers import random_prompts, tiny_model


def _model():
    model = tiny_model(layers=2, heads=4, kv_heads=2, head_dim=16, seed=41)
    model.generation_config.eos_token_id = None
    model.config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


@pytest.mark.parametrize("method", ["snapkv", "ada-snapkv", "pyramidkv"])  # equal, adaptive, per-layer budgets
@torch.inference_mode()
def test_a_copied_prefill_decodes_like_identical_prompts(method):
    model = _model()
    runner = ModelRunner(model, TORCH_BACKEND)
    (prompt,) = random_prompts([37], seed=42)
    sampling = SamplingParams(max_new_tokens=6)
    batch = 3
    _, expected = runner.run([prompt], [Variant(0, get_method(method), 12)] * batch, sampling)
    with attention_implementation(model, ATTENTION_NAME):
        one = runner.prefill([prompt], [Variant(0, get_method(method), 12)], sampling.max_new_tokens)
        lens_before = one.cache.kv_lens.clone()
        copied = replicate_prefill(one, batch)
        decoded = runner.decode(copied, one.logits.argmax(dim=-1).expand(batch), sampling, None)
    assert torch.equal(decoded.tokens, expected.tokens)
    assert torch.equal(one.cache.kv_lens, lens_before) and one.cache.decode_steps == 0  # the source is untouched
    assert torch.equal(copied.memory.allocated, one.memory.allocated.repeat(1, batch))
    with pytest.raises(ValueError, match="batch=0"):
        replicate_prefill(one, 0)


@pytest.mark.parametrize("kind", ["static", "dynamic"])
@torch.inference_mode()
def test_a_copied_transformers_cache_gives_generates_tokens(kind):
    model = _model()
    (prompt,) = random_prompts([29], seed=43)
    ids = torch.tensor([prompt])
    batch, new = 3, 5
    batch_ids = ids.expand(batch, -1)
    expected = model.generate(batch_ids, attention_mask=torch.ones_like(batch_ids), max_new_tokens=new,
                              min_new_tokens=new, do_sample=False)
    cache = prefilled_hf_cache(model, ids, batch, new, kind)
    assert int(cache.get_seq_length()) == len(prompt) - 1
    out = model.generate(batch_ids, attention_mask=torch.ones_like(batch_ids), past_key_values=cache,
                         max_new_tokens=new, min_new_tokens=new, do_sample=False, disable_compile=True)
    assert torch.equal(out, expected)


def test_max_batch_extrapolates_the_measured_peak_and_never_goes_below_the_kv_bytes():
    gib = 2**30

    def row(batch, decode_peak, kv_alloc=None, check="ok"):
        return {"config": {"batch": batch}, "check": check, "decode_peak_bytes": decode_peak, "peak_bytes": decode_peak,
                "kv_bytes": gib // 8, "kv_alloc_bytes": kv_alloc}

    rows = [row(1, 17 * gib), row(8, 24 * gib), row(32, 200 * gib, check="oom")]  # 1 GiB per sequence, 16 fixed
    fit = max_batch(rows, total_bytes=100 * gib)
    assert fit["bytes_per_seq"] == gib and fit["fixed_bytes"] == 16 * gib and fit["from_batches"] == [1, 8]
    assert fit["max_batch"] == int((MEMORY_FRACTION * 100 - 16))
    flat = max_batch([row(1, 17 * gib, kv_alloc=gib // 2), row(8, 17 * gib, kv_alloc=gib // 2)], 100 * gib)
    assert flat["bytes_per_seq"] == gib // 2  # a flat peak still reserves each sequence's KV
    assert max_batch([row(1, 17 * gib)], 100 * gib) is None  # one measured batch is not enough
