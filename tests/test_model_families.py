"""Models by capability: tiny random Llama, Mistral, Qwen2, Qwen3 (q/k norms) and Phi3 (fused qkv) models give
transformers' own greedy tokens with `full` and run every method; sliding-window, chunked and soft-capped attention
are refused by name; Hub ids in the local Hugging Face cache load without the network."""

from __future__ import annotations

import socket

import huggingface_hub.constants
import pytest
import torch
from raggedkv.engine import Engine
from raggedkv.engine.default_model import resolve_model
from raggedkv.engine.methods import METHODS
from transformers import Gemma2Config, Gemma2ForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from tests.engine_helpers import FAMILIES, char_tokenizer, hf_greedy, random_prompts, tiny_model
from tests.test_engine_methods import tiny_score_files

NEW_TOKENS = 8
KV_SIZE = 16
# Every method on Qwen3; a uniform and a head-score method on the other non-Llama families (Llama: test_engine_methods).
METHOD_CASES = [("qwen3", method) for method in sorted(METHODS)] + [
    (family, method) for family in ("mistral", "phi3", "qwen2") for method in ("snapkv", "compresskv")
]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_full_matches_transformers_generate(family):
    model = tiny_model(family, heads=4, kv_heads=2, seed=11)
    engine = Engine.from_model(model, method="full", backend="torch")
    for ids in random_prompts([1, 13, 40], seed=12):
        expected = hf_greedy(model, ids, NEW_TOKENS)
        result = engine.generate_ids([ids], max_new_tokens=NEW_TOKENS)[0]
        assert result.token_ids == expected, (family, len(ids))


@pytest.mark.parametrize(("family", "method"), METHOD_CASES)
def test_every_method_runs_and_keeps_its_budget(family, method, tmp_path):
    model = tiny_model(family, layers=2, heads=4, kv_heads=2, seed=13)
    params = tiny_score_files(tmp_path, layers=2, heads=4).get(method, {})
    engine = Engine.from_model(model, method=method, backend="torch", **params)
    lengths = (40, 23)
    results = engine.generate_ids(random_prompts(list(lengths), seed=14), kv_size=KV_SIZE, max_new_tokens=3)
    for result, prompt_len in zip(results, lengths, strict=True):
        kept = sum(map(sum, result.stats.kept_tokens))
        assert kept == 2 * 2 * (prompt_len if method == "full" else KV_SIZE), (family, method)
        assert 1 <= len(result.token_ids) <= 3
        assert all(0 <= token < model.config.vocab_size for token in result.token_ids)


@pytest.mark.parametrize(
    ("family", "overrides", "feature"),
    [
        ("qwen2", {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0}, "sliding_attention"),
        ("llama", {"layer_types": ["full_attention", "chunked_attention"]}, "chunked_attention"),
    ],
    ids=["qwen2-sliding-window", "chunked-layers"],
)
def test_sliding_window_layers_are_refused_by_name(family, overrides, feature):
    model = tiny_model(family, **overrides)
    with pytest.raises(ValueError, match=f"layer_types has .*'{feature}'.* only full causal attention"):
        Engine.from_model(model, method="full", backend="torch")


def test_soft_capped_attention_is_refused_by_name(tmp_path):
    config = Gemma2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                          layer_types=["full_attention", "full_attention"], attn_logit_softcapping=50.0)
    model = Gemma2ForCausalLM(config)
    with pytest.raises(ValueError, match=r"attn_logit_softcapping=50.0 \(soft-capped attention\)"):
        Engine.from_model(model, method="full", backend="torch")
    config.save_pretrained(tmp_path)  # from a folder: refused before any weights are read
    with pytest.raises(ValueError, match="attn_logit_softcapping"):
        Engine.from_pretrained(str(tmp_path), method="full")


def test_gpt2_is_accepted_by_capability():
    """No RoPE, learned positions, fused c_attn: accepted because its attention goes through AttentionInterface."""
    config = GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=96, n_positions=128, bos_token_id=1,
                        eos_token_id=2, initializer_range=0.5, attn_implementation="sdpa")  # varied tokens
    torch.manual_seed(19)
    model = GPT2LMHeadModel(config).eval()
    engine = Engine.from_model(model, method="full", backend="torch")
    for ids in random_prompts([5, 30], seed=20):
        assert engine.generate_ids([ids], max_new_tokens=NEW_TOKENS)[0].token_ids == hf_greedy(model, ids, NEW_TOKENS)


def test_attention_outside_the_interface_is_refused_by_name():
    class HandWrittenAttentionLlama(LlamaForCausalLM):
        _supports_attention_backend = False

    model = HandWrittenAttentionLlama(tiny_model().config)
    with pytest.raises(ValueError, match="HandWrittenAttentionLlama does not run its attention through transformers"):
        Engine.from_model(model, method="full", backend="torch")


def test_value_head_size_other_than_head_dim_is_refused_by_name():
    model = tiny_model()  # head_dim 16
    model.config.v_head_dim = 8
    with pytest.raises(ValueError, match=r"\{'v_head_dim': 8\} differ from head_dim=16"):
        Engine.from_model(model, method="full", backend="torch")


def test_mistral_sliding_window_at_or_past_the_context_is_full_attention():
    """A window that no sequence can outgrow changes nothing (shorter ones: `check_prompt_ids` refuses per prompt)."""
    for window in (None, 256, 10_000):
        model = tiny_model("mistral", context=256, sliding_window=window, seed=15)
        (ids,) = random_prompts([30], seed=16)
        result = Engine.from_model(model, method="full", backend="torch").generate_ids([ids], max_new_tokens=4)[0]
        assert result.token_ids == hf_greedy(model, ids, 4), window


def test_hub_id_in_the_local_cache_loads_without_the_network(tmp_path, monkeypatch):
    """A tiny model laid out as the hub cache does (models--org--name/snapshots/<rev>/, refs/main), loaded by id."""
    model, tokenizer = tiny_model("qwen3", seed=17), char_tokenizer()
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-qwen3"
    model.save_pretrained(repo / "snapshots" / revision)
    tokenizer.save_pretrained(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise OSError("the test forbids network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert resolve_model("tiny-org/tiny-qwen3") == repo / "snapshots" / revision
    engine = Engine.from_pretrained("tiny-org/tiny-qwen3", method="full", device="cpu", backend="torch")
    assert engine.tokenizer("a b").input_ids == tokenizer("a b").input_ids
    (ids,) = random_prompts([12], seed=18)
    assert engine.generate_ids([ids], max_new_tokens=4)[0].token_ids == hf_greedy(model, ids, 4)
    with pytest.raises(FileNotFoundError, match="nor a Hub id in the local Hugging Face cache"):
        Engine.from_pretrained("tiny-org/not-cached", method="full")
