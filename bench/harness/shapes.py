"""The model shapes the benchmarks use: transformers config fields of real architectures, instantiated with random
weights where a bench runs a whole model (speed and memory do not depend on the weights, so nothing is downloaded).

The kernel benches use the attention shape of one layer (`attention_shape`); `bench_e2e` builds whole models
(`hf_config`). Llama-3-8B and Mistral-7B have the same attention shape (32 query / 8 KV heads, head_dim 128).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raggedkv.engine.methods.base import ModelShape

_ROPE = {"rope_type": "default"}
_LONG = 131072 + 1024  # room for a 128K prompt and its generated tokens

# name -> (transformers family, config fields); vocabularies as released (Llama-3: 128256, Mistral-7B-v0.3: 32768).
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama3-8b": ("llama", dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5,
                                max_position_embeddings=_LONG, rope_parameters=_ROPE | {"rope_theta": 500000.0})),
    "mistral-7b": ("mistral", dict(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5,
                                   max_position_embeddings=_LONG, sliding_window=None,
                                   rope_parameters=_ROPE | {"rope_theta": 1000000.0})),
    "smollm2-135m": ("llama", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5,
                                   max_position_embeddings=8192, tie_word_embeddings=True,
                                   rope_parameters=_ROPE | {"rope_theta": 100000.0})),
    "tiny-llama": ("llama", dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)),
    "tiny-mistral": ("mistral", dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                                     sliding_window=None)),
}
KERNEL_SHAPES = ("llama3-8b", "smollm2-135m")  # the kernel benches' grid (Mistral-7B's attention = Llama-3-8B's)


def _check(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"model shape {name!r} is unknown; choose one of {sorted(MODELS)}")


@functools.cache
def attention_shape(name: str) -> ModelShape:
    """Layers, query / KV heads and head_dim of the named model (the engine's own reading of a config).

    The engine is imported here, not at module import: importing it loads the Triton kernels, which a CPU dry run
    must first switch to the interpreter (`environment.prepare_cpu_interpreter`).
    """
    from raggedkv.engine.models import model_shape

    _check(name)
    return model_shape(SimpleNamespace(**MODELS[name][1]))


def hf_config(name: str):
    """The transformers config of the named model; no BOS/EOS end (`eos_token_id=None`), pad id 0."""
    from transformers import LlamaConfig, MistralConfig

    _check(name)
    family, fields = MODELS[name]
    return (LlamaConfig if family == "llama" else MistralConfig)(**fields, bos_token_id=1, eos_token_id=None,
                                                                 pad_token_id=0)
