"""A Hugging Face causal LM as the rest of raggedkv sees it: loading (one dtype policy), attention shape,
end-of-sequence ids and the switch of its attention implementation.

Where a model name leads (the default model, converted once from its GGUF file, or a local folder) is
`default_model`; which models the engine's ragged cache supports (by capability) is `hf.check_model_support`.

Dtype policy (`resolve_dtype`, used by every loader): bfloat16 on CUDA, float32 on every other device, unless a
dtype is asked for; only float32, float16 and bfloat16 (a `torch.dtype` or its name) are accepted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .default_model import DEFAULT_MODEL, resolve_model
from .methods.base import ModelShape

MODEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device | str) -> torch.dtype:
    """The weights' dtype: `dtype` (a `torch.dtype` or its name), or by default bfloat16 on CUDA, float32 elsewhere.

    Raises:
        ValueError: a dtype other than float32, float16 or bfloat16.
    """
    if dtype is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if resolved not in MODEL_DTYPES:
        raise ValueError(f"dtype must be float32, float16 or bfloat16 (a torch.dtype or its name), got {dtype!r}")
    return resolved


def load_model(
    model: str | os.PathLike = DEFAULT_MODEL,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    tp_plan: str | dict[str, str] | None = None,
) -> tuple[Any, Any]:
    """(model in eval mode on `device`, its tokenizer) for the default model's name, a local HF folder
    or a Hub id in the local Hugging Face cache.

    Args:
        device: default `default_device()`. dtype: default per the module's dtype policy (`resolve_dtype`).
        tp_plan: ``"auto"`` (or a transformers tensor-parallel plan dict) loads the model sharded over the ranks of
            ``torchrun`` (`DistributedConfig(tp_plan=...)`; each rank on its own device, so `device` must be None).

    Raises:
        FileNotFoundError: neither the default model's name, nor a local folder with a config.json, nor a cached
            Hub id.
        ValueError: a bad dtype, both `device` and `tp_plan`, or heads that do not split over the ``torchrun``
            ranks (`WORLD_SIZE`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if tp_plan is not None and device is not None:
        raise ValueError(f"device={device!r} goes without tp_plan: tensor parallelism puts each rank on its own device")
    path = resolve_model(model)
    if tp_plan is not None:
        from transformers import AutoConfig
        from transformers.distributed import DistributedConfig

        from .parallel_budgets import check_heads_split

        shape = model_shape(AutoConfig.from_pretrained(path))  # refuse before loading any weights
        check_heads_split(shape.num_qo_heads, shape.num_kv_heads, int(os.environ.get("WORLD_SIZE", "1")))

        dtype = resolve_dtype(dtype, default_device())
        hf_model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, distributed_config=DistributedConfig(tp_plan=tp_plan)
        ).eval()
        return hf_model, AutoTokenizer.from_pretrained(path)
    device = torch.device(device) if device is not None else default_device()
    dtype = resolve_dtype(dtype, device)
    hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return hf_model, AutoTokenizer.from_pretrained(path)


def model_shape(config: Any) -> ModelShape:
    """The attention shape of a decoder's transformers config (`head_dim` defaults to
    `hidden_size // num_attention_heads`, `num_key_value_heads` to `num_attention_heads`)."""
    heads = config.num_attention_heads
    return ModelShape(
        num_layers=config.num_hidden_layers,
        num_qo_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
    )


def eos_token_ids(model: Any) -> list[int]:
    """The ids that end a sequence: the model's generation config `eos_token_id`, else its config's; [] if none."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


@contextmanager
def attention_implementation(model: Any, name: str) -> Iterator[None]:
    """Run `model` with the registered attention implementation `name`, restoring its own one on exit."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
