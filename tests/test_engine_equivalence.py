"""Engine outputs against transformers' own generate, against `full`, and batched against one prompt at a time."""

from __future__ import annotations

import pytest

from raggedkv.engine import Engine
from tests.engine_helpers import char_tokenizer, hf_greedy, random_prompts, tiny_model

NEW_TOKENS = 12


@pytest.mark.parametrize(
    ("family", "heads", "kv_heads"),
    [("llama", 4, 4), ("llama", 4, 2), ("mistral", 4, 1), ("mistral", 4, 4)],
    ids=["llama-mha", "llama-gqa", "mistral-mqa", "mistral-mha"],
)
def test_full_matches_transformers_generate(family, heads, kv_heads):
    model = tiny_model(family, heads=heads, kv_heads=kv_heads, seed=1)
    engine = Engine.from_model(model, method="full", backend="torch")
    for ids in random_prompts([1, 9, 37], seed=2):
        expected = hf_greedy(model, ids, NEW_TOKENS)
        for kv_size in (None, 8):  # `full` ignores kv_size
            result = engine.generate_ids([ids], kv_size=kv_size, max_new_tokens=NEW_TOKENS)[0]
            assert result.token_ids == expected, (len(ids), kv_size)
            assert not result.stats.compressed


def test_kv_size_at_or_above_prompt_length_compresses_nothing():
    model = tiny_model(seed=3)
    (ids,) = random_prompts([30], seed=4)
    expected = Engine.from_model(model, method="full", backend="torch").generate_ids([ids], max_new_tokens=NEW_TOKENS)
    snapkv = Engine.from_model(model, method="snapkv", backend="torch")
    for kv_size in (30, 31, 200):
        result = snapkv.generate_ids([ids], kv_size=kv_size, max_new_tokens=NEW_TOKENS)[0]
        assert result.token_ids == expected[0].token_ids
        assert not result.stats.compressed
        assert result.stats.kept_tokens == [[30, 30], [30, 30]]
        assert result.stats.kv_bytes_kept == result.stats.kv_bytes_full
    compressed = snapkv.generate_ids([ids], kv_size=16, max_new_tokens=NEW_TOKENS)[0].stats
    assert compressed.compressed and compressed.kept_tokens == [[16, 16], [16, 16]]
    assert compressed.kv_bytes_kept * 30 == compressed.kv_bytes_full * 16


@pytest.mark.parametrize("method", ["full", "snapkv"])
def test_batch_of_three_equals_each_prompt_alone(method):
    model = tiny_model(heads=4, kv_heads=2, seed=5)
    engine = Engine.from_model(model, method=method, backend="torch")
    prompts = random_prompts([41, 12, 27], seed=6)  # 12 <= kv_size: that one is kept whole
    batch = engine.generate_ids(prompts, kv_size=16, max_new_tokens=NEW_TOKENS)
    for ids, together in zip(prompts, batch, strict=True):
        alone = engine.generate_ids([ids], kv_size=16, max_new_tokens=NEW_TOKENS)[0]
        assert together.token_ids == alone.token_ids
        assert together.stats.kept_tokens == alone.stats.kept_tokens
        assert together.stats.kv_bytes_kept == alone.stats.kv_bytes_kept
        assert together.stats.batch_size == 3
    assert [r.stats.compressed for r in batch] == ([True, False, True] if method == "snapkv" else [False] * 3)


def test_text_prompts_chat_template_and_end_tokens():
    model = tiny_model(seed=7)
    tokenizer = char_tokenizer()
    engine = Engine.from_model(model, tokenizer, method="snapkv", backend="torch")
    text = "The quick brown fox jumps over the lazy dog."
    single = engine.generate(text, kv_size=8, max_new_tokens=6)
    batch = engine.generate([text, "Hi!"], kv_size=8, max_new_tokens=6)
    assert single.token_ids == batch[0].token_ids
    assert single.text == tokenizer.decode(single.token_ids, skip_special_tokens=True)
    assert batch[1].stats.prompt_tokens == 3  # this tokenizer has no chat template: the prompt as it is

    tokenizer.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    assert engine.encode("Hi!") == tokenizer("[Hi!]").input_ids
    assert engine.encode("Hi!", chat_template=False) == tokenizer("Hi!").input_ids

    stop = single.token_ids[1]  # make the second generated token an end token: generation stops at its first use
    model.generation_config.eos_token_id = [stop]
    stopped = Engine.from_model(model, method="snapkv", backend="torch").generate_ids(
        [tokenizer(text).input_ids], kv_size=8, max_new_tokens=6)[0]
    assert stopped.token_ids == single.token_ids[: single.token_ids.index(stop) + 1]
    assert stopped.finish_reason == "eos" and single.finish_reason == "length"


def test_sampling_is_reproducible_with_a_seed():
    model = tiny_model(seed=8)
    engine = Engine.from_model(model, method="snapkv", backend="torch")
    prompts = random_prompts([20, 25], seed=9)
    runs = [engine.generate_ids(prompts, kv_size=12, max_new_tokens=10, temperature=1.5, top_p=0.9, seed=s)
            for s in (11, 11, 12)]
    assert [r.token_ids for r in runs[0]] == [r.token_ids for r in runs[1]]
    assert [r.token_ids for r in runs[0]] != [r.token_ids for r in runs[2]]
