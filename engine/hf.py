"""Hugging Face integration: the ragged cache behind transformers' own extension points, for every supported family.

No modeling file is copied or patched. Two extension points carry everything:

* a `transformers.Cache` (`RaggedHFCache`, one `CacheLayerMixin` per layer) passed as `past_key_values`: the model's
  attention calls `update(k, v, layer_idx)` with post-RoPE keys. During a prefill it returns them unchanged (the
  prompt attends to itself in full); during decode it appends them to the ragged cache (`append_kv`) and returns
  the layer's packed buffers;
* an attention function registered with `AttentionInterface` under the name ``"raggedkv"`` (`ragged_attention`)
  and selected for the duration of an engine call (`models.attention_implementation`) or of a
  `raggedkv.compressed` block: prefill runs transformers' own SDPA attention, then compresses the layer into the
  ragged cache (`RaggedHFCache.prefill_hook`); decode runs `ragged_decode_attention` over the packed segments.

How the attention function finds its cache: transformers passes `past_key_values` to the attention module but not
to the attention function, and every attention module calls `past_key_values.update(k, v, layer_idx)` right
before it calls the attention function. So `RaggedLayer.update` hands its `RaggedHFCache` over to the next
`ragged_attention` call through a context variable (`_HANDOVER`, per thread and per asyncio task), and the
attention function takes it back (checking the layer index). No forward keyword and no hook is needed, so the
Engine's runner, `model.generate` inside `raggedkv.compressed` and callers that drop unknown keywords (pipelines)
all work the same way: the model only has to get the `RaggedHFCache` as its `past_key_values`.

``"raggedkv"`` has no entry in `AttentionMaskInterface`, so transformers builds no attention mask for it (prefill is
one unpadded sequence per batch row, causal; decode needs none).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import transformers
from packaging.version import Version
from transformers import AttentionInterface, Cache
from transformers.cache_utils import CacheLayerMixin
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .cache import RaggedKVCache
from .models import model_shape

ATTENTION_NAME = "raggedkv"
# config settings that change what attention computes -> the feature named when a model is refused for one
UNSUPPORTED_ATTENTION_SETTINGS = {
    "attn_logit_softcapping": "soft-capped attention",
    "attention_chunk_size": "chunked attention",
}
TESTED_TRANSFORMERS = (Version("5.17"), Version("5.24"))  # [low, high)

# The cache of the attention module now running, with its layer index: set by `RaggedLayer.update`, taken back by
# `ragged_attention` (see the module docstring).
_HANDOVER: ContextVar[tuple[RaggedHFCache, int] | None] = ContextVar("raggedkv_cache_handover", default=None)

# (layer, query [1, Hq, n, D], key [1, Hkv, n, D], value [1, Hkv, n, D], sm_scale) -> None
PrefillHook = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, float], None]


def check_transformers_version(version: str = transformers.__version__) -> None:
    """Warn when the installed transformers is outside the range the integration was tested with."""
    low, high = TESTED_TRANSFORMERS
    if not low <= Version(version) < high:
        warnings.warn(
            f"raggedkv was tested with transformers >={low},<{high}; found {version}. The Cache and attention "
            "interfaces it uses may have changed.",
            stacklevel=2,
        )


check_transformers_version()


def check_model_support(config: transformers.PretrainedConfig, model_class: type | None = None) -> None:
    """Raise ValueError, naming the feature, unless the model's attention is one the ragged cache reproduces exactly.

    Accepted: a causal LM (`model_class`, default the class `AutoModelForCausalLM` maps `config` to) whose attention
    goes through transformers' `AttentionInterface` (`_supports_attention_backend`), with full causal attention in
    every layer and one head_dim for queries, keys and values. Refused: sliding-window or chunked layers
    (`config.layer_types`, e.g. Qwen2 with `use_sliding_window=True`, Gemma2), soft-capped attention
    (`attn_logit_softcapping`), and different key and value head sizes (`v_head_dim`, as in multi-head latent
    attention). A Mistral-style `sliding_window` without `layer_types` is accepted here: a sequence that stays
    inside the window is attended in full, and `checks.check_prompt_ids` refuses any sequence that would not.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    model_type = getattr(config, "model_type", None)
    if model_class is None:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if model_class is None or getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"model type {model_type!r} is not supported: it is not a decoder-only causal LM")
    if not getattr(model_class, "_supports_attention_backend", False):
        raise ValueError(
            f"model type {model_type!r} is not supported: {model_class.__name__} does not run its attention through "
            "transformers' AttentionInterface"
        )
    other_layers = sorted({kind for kind in getattr(config, "layer_types", None) or [] if kind != "full_attention"})
    if other_layers:
        raise ValueError(
            f"model type {model_type!r} is not supported: its config.layer_types has {other_layers} layers "
            "(sliding-window or chunked attention), and the ragged cache implements only full causal attention"
        )
    for setting, kind in UNSUPPORTED_ATTENTION_SETTINGS.items():
        if getattr(config, setting, None) is not None:
            raise ValueError(
                f"model type {model_type!r} is not supported: {setting}={getattr(config, setting)} ({kind}), and the "
                "ragged cache implements only plain full causal attention"
            )
    head_dim = model_shape(config).head_dim
    other_sizes = {
        name: getattr(config, name)
        for name in ("qk_head_dim", "v_head_dim")
        if getattr(config, name, None) not in (None, head_dim)
    }
    if other_sizes:
        raise ValueError(
            f"model type {model_type!r} is not supported: {other_sizes} differ from head_dim={head_dim}, and the "
            "ragged cache holds one head_dim for queries, keys and values"
        )


class RaggedLayer(CacheLayerMixin):
    """The HF cache layer of one decoder layer: routes `update` to the ragged cache."""

    is_sliding = False

    def __init__(self, owner: RaggedHFCache, layer_idx: int) -> None:
        super().__init__()
        self.owner, self.layer_idx = owner, layer_idx
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the ragged cache is allocated before the first forward."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill: return `[1, Hkv, n, D]` k/v unchanged. Decode: append `[B, Hkv, 1, D]`, return the packed buffers.

        The packed buffers are the layer's `[layer_rows, head_dim]` K and V; `ragged_attention` reads them with the
        layer's `kv_indptr`/`kv_lens`. Either way the cache is handed over to that `ragged_attention` call.
        """
        _HANDOVER.set((self.owner, self.layer_idx))
        if self.owner.prefill_hook is not None:
            return key_states, value_states
        cache = self.owner.ragged
        batch, heads, _, head_dim = key_states.shape
        cache.append(self.layer_idx, key_states.reshape(batch * heads, head_dim),
                     value_states.reshape(batch * heads, head_dim))
        layer = cache.layer(self.layer_idx)
        return layer.k_cache, layer.v_cache

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        """Positions seen by the longest sequence before this step: 0 while a prefill is pending or running (so
        `generate` feeds the whole prompt), then its prompt plus the decode steps counted so far (host counters only,
        unchanged during a step)."""
        if self.owner.prefill_hook is not None:
            return 0
        cache = self.owner.ragged
        return max(cache.prompt_lens) + cache.decode_steps

    def get_max_length(self) -> int:
        return -1


class RaggedHFCache(Cache):
    """A `transformers.Cache` over a `RaggedKVCache`, plus the per-forward state the attention function reads.

    prefill_hook: set while one sequence's prompt runs through the model (`prefilling`), or, for a generate call
        inside `raggedkv.compressed`, from allocation until its prefill forward ends; None during decode.
    decode_plans: per layer, the extra `ragged_decode_attention` arguments planned once from capacities.
    """

    def __init__(self, ragged: RaggedKVCache) -> None:
        super().__init__(layers=[RaggedLayer(self, i) for i in range(ragged.num_layers)])
        self.ragged = ragged
        self.prefill_hook: PrefillHook | None = None
        self.decode_plans: list[dict] = [{} for _ in range(ragged.num_layers)]

    @contextmanager
    def prefilling(self, hook: PrefillHook) -> Iterator[None]:
        """Route the next forward's attention through full-attention prefill followed by `hook` in every layer."""
        self.prefill_hook = hook
        try:
            yield
        finally:
            self.prefill_hook = None

    def plan_decode(self) -> None:
        """Plan every layer's decode attention from its segment capacities (host data, once per generation)."""
        ragged = self.ragged
        self.decode_plans = [
            ragged.backend.plan_decode(ragged.capacities[layer], ragged.kv.device) for layer in range(ragged.num_layers)
        ]


def ragged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The ``"raggedkv"`` attention function (transformers' AttentionInterface signature).

    Args:
        module: the attention module; its `layer_idx` must be the layer whose `RaggedLayer.update` ran just before.
        query: `[B, Hq, S, D]` after RoPE; key, value: what `RaggedLayer.update` returned.

    Returns:
        (`[B, S, Hq, D]` attention output, None).
    """
    handed_over = _HANDOVER.get()
    _HANDOVER.set(None)
    layer = module.layer_idx
    if handed_over is None or handed_over[1] != layer:
        raise RuntimeError(
            f"the {ATTENTION_NAME!r} attention implementation runs only on a raggedkv cache (raggedkv's Engine, or "
            "model.generate inside raggedkv.compressed); this forward's past_key_values is not one. Call "
            "model.set_attn_implementation('sdpa') to use this model elsewhere"
        )
    ragged_cache = handed_over[0]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if ragged_cache.prefill_hook is not None:
        out, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, None, dropout=0.0, scaling=scale)
        ragged_cache.prefill_hook(layer, query, key, value, scale)
        return out, None
    cache = ragged_cache.ragged
    kv_indptr, kv_lens = cache.kv_indptr[layer], cache.kv_lens[layer]
    out = cache.backend.ragged_decode_attention(
        query[:, :, 0], key, value, kv_indptr, kv_lens, scale, **ragged_cache.decode_plans[layer]
    )  # [B, Hq, D]
    return out[:, None], None


AttentionInterface.register(ATTENTION_NAME, ragged_attention)
