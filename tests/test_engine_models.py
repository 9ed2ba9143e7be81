"""engine/models.py, the one home of model loading's dtype policy, model shape, end-of-sequence ids and the
attention-implementation switch."""

from __future__ import annotations

import pytest
import torch
from raggedkv.engine.models import attention_implementation, eos_token_ids, model_shape, resolve_dtype
from transformers import GenerationConfig, LlamaConfig, MistralConfig

from tests.engine_helpers import tiny_model


def test_model_shape_reads_the_config_and_its_defaults():
    explicit = MistralConfig(num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2, hidden_size=64,
                             head_dim=32)
    shape = model_shape(explicit)
    assert (shape.num_layers, shape.num_qo_heads, shape.num_kv_heads, shape.head_dim) == (3, 8, 2, 32)
    implied = LlamaConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=64)
    implied.head_dim = None
    implied.num_key_value_heads = None
    shape = model_shape(implied)
    assert (shape.num_layers, shape.num_qo_heads, shape.num_kv_heads, shape.head_dim) == (2, 4, 4, 16)


@pytest.mark.parametrize(
    ("dtype", "device", "expected"),
    [
        (None, "cpu", torch.float32),
        (None, "cuda", torch.bfloat16),
        (None, "meta", torch.float32),
        ("float16", "cpu", torch.float16),
        (torch.bfloat16, "cpu", torch.bfloat16),
    ],
)
def test_one_dtype_policy(dtype, device, expected):
    assert resolve_dtype(dtype, device) == expected


@pytest.mark.parametrize("dtype", ["float64", "nope", torch.int8, 3])
def test_bad_dtype_is_refused_by_name(dtype):
    with pytest.raises(ValueError, match=r"dtype must be float32, float16 or bfloat16 .*got"):
        resolve_dtype(dtype, "cpu")


def test_eos_token_ids_from_generation_config_then_config():
    model = tiny_model()
    model.generation_config = GenerationConfig(eos_token_id=[5, 9])
    assert eos_token_ids(model) == [5, 9]
    model.generation_config = GenerationConfig(eos_token_id=7)
    assert eos_token_ids(model) == [7]
    model.generation_config = GenerationConfig()
    model.config.eos_token_id = 3
    assert eos_token_ids(model) == [3]
    model.config.eos_token_id = None
    assert eos_token_ids(model) == []


def test_attention_implementation_is_restored_even_after_an_error():
    model = tiny_model()
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="inside"):
        with attention_implementation(model, "eager"):
            assert model.config._attn_implementation == "eager"
            raise RuntimeError("inside")
    assert model.config._attn_implementation == "sdpa"
