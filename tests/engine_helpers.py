"""Helpers for the engine tests: tiny seeded random models of several families (`FAMILIES`), a character tokenizer,
HF's greedy output."""

from __future__ import annotations

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

VOCAB = 96
EOS = 2
_CHARS = " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()-\n"

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "phi3": (Phi3Config, Phi3ForCausalLM),
}


def tiny_model(
    family: str = "llama",
    *,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 16,
    context: int = 256,
    seed: int = 0,
    **config_overrides,
):
    """A seeded fp32 random model of `family` (a key of `FAMILIES`) with `eos_token_id=EOS`, in eval mode.

    `config_overrides` go to the config as keywords (e.g. ``sliding_window=8``)."""
    config_cls, model_cls = FAMILIES[family]
    config = config_cls(
        vocab_size=VOCAB,
        hidden_size=heads * head_dim,
        intermediate_size=2 * heads * head_dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=context,
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=0,
        attn_implementation="sdpa",
        **config_overrides,
    )
    torch.manual_seed(seed)
    return model_cls(config).eval()


def random_prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    """Prompts of the given lengths, token ids in [3, VOCAB) (no special tokens)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def hf_greedy(model, ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy `generate` (new tokens only, the end token included if it stopped there)."""
    out = model.generate(
        torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=EOS, pad_token_id=0
    )
    return out[0, len(ids) :].tolist()


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over `_CHARS` (ids 3..), with `<unk>`=0, `<s>`=1, `</s>`=EOS; no chat template."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": EOS, **{c: i + 3 for i, c in enumerate(_CHARS)}}
    assert len(vocab) <= VOCAB
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
