"""`raggedkv.compressed`: the ragged cache behind plain `model.generate(...)`, transformers' own generation loop.

    import raggedkv
    with raggedkv.compressed(model, method="snapkv", kv_size=64):
        out = model.generate(input_ids, max_new_tokens=100)   # greedy, sampling, streamers, stop strings, ...

Inside the block `model.generate` prefills each prompt with full attention, compresses it into a `RaggedHFCache`
exactly as the `Engine` does (same method, budgets, compressors and kernels: greedy tokens equal
`Engine.generate_ids` for the same method and kv_size) and decodes on it; token choice, logits processors, stopping
criteria and streamers are transformers' own. How it is wired, with nothing patched in transformers:

* the model's attention implementation is ``"raggedkv"`` (`hf.ragged_attention`) for the duration of the block;
* `model.generate` is wrapped (an instance attribute): the wrapper checks the call (`check_generate_call`), sizes
  and allocates the cache for its prompts (decode headroom `max_new_tokens - 1`, read from the call's resolved
  generation config) and passes it as `past_key_values`; the cache reports 0 seen tokens until its prefill ran,
  so transformers feeds the whole prompt;
* two forward hooks on the model: before a forward, the headroom guard (and the refusal of forwards that are not
  the cache's prefill or single-token decode steps); after it, the end of the prefill (`plan_decode`) or the count
  of one decode step, the bookkeeping `ModelRunner` does around its own steps. An `Engine`'s forwards (on its own
  cache) are left to its runner; any other forward inside the block is refused.

Given the model's `tokenizer`, a prompt whose ids end with its chat template's assistant header (as
`tokenizer.apply_chat_template(..., add_generation_prompt=True)` makes them) is compressed with the question-aware
window of `Engine.generate`: the window just before the header scores, and every head keeps the header
(`compress.with_header`; greedy tokens equal `Engine.generate` of the same user text). Without a tokenizer, or with
`question_window=False`, scoring uses the plain window (the prompt's last `window` tokens), as `Engine.generate_ids`
does by default.

On exit (also after an exception) the attention implementation (switched in `model.config` for the block), the
training flag, `generate` and the hooks are restored; the generation config is never written. Refused, with an
error naming the argument: beam search (`num_beams > 1`), several returned sequences per prompt
(`num_return_sequences > 1`), assisted decoding (`assistant_model`, `prompt_lookup_num_tokens`), chunked prefill
(`prefill_chunk_size`), padded batches (zeros in `attention_mask`), `inputs_embeds`, a caller's own
`past_key_values` and `use_cache=False`. An unpadded batch of equal-length prompts works (each row is compressed on
its own).
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from .chat_header import assistant_header_ids, trailing_header
from .checks import check_kv_size, check_prompt_ids
from .generate import Engine
from .hf import ATTENTION_NAME, RaggedHFCache
from .models import attention_implementation
from .runner import Variant

WHERE = "inside raggedkv.compressed"
# The caches `allocate` made for generate calls: the forward hooks keep their books (an Engine's cache is its
# runner's to keep).
_GENERATE_CACHES: weakref.WeakSet[RaggedHFCache] = weakref.WeakSet()


@contextmanager
def compressed(
    model: PreTrainedModel,
    method: str = "snapkv",
    kv_size: int | None = None,
    head_scores: object = None,
    backend: str = "auto",
    tokenizer: PreTrainedTokenizerBase | None = None,
    question_window: bool = True,
    **method_params,
) -> Iterator[PreTrainedModel]:
    """Run `model.generate` on a compressed ragged cache inside the block; yields `model`.

    Args:
        method: a method name or variant spelling (``"snapkv"``, ``"headkv-r2:beta=1.5"``; see
            `raggedkv.engine.methods.METHODS`) or a `Method` instance.
        kv_size: tokens kept per KV head per layer on average, window included; None (or a value >= a prompt's
            length) keeps the whole prompt.
        head_scores, backend, method_params: as in `Engine.from_model`.
        tokenizer: the model's tokenizer; with it (and `question_window`), a prompt that ends with the chat
            template's assistant header is scored with the window before the header, and every head keeps the
            header on top of `kv_size`'s window share (`kv_size` counts the header too, as in `Engine.generate`).
        question_window: False scores every prompt with its last `window` tokens, header or not.

    Raises:
        ValueError: an unsupported model, unknown method or backend, or a bad kv_size (before the model is
            touched); inside the block, a refused `generate` argument (see the module docstring).
    """
    was_training = model.training
    engine = Engine.from_model(model, None, method, head_scores=head_scores, backend=backend, **method_params)
    try:
        check_kv_size(kv_size, engine.method)
        header_ids = assistant_header_ids(tokenizer) if tokenizer is not None and question_window else []
        with ExitStack() as restore:
            restore.enter_context(attention_implementation(model, ATTENTION_NAME))
            had_own_generate = "generate" in vars(model)
            own_generate = vars(model).get("generate")
            model.generate = _compressed_generate(model, engine, kv_size, model.generate, header_ids)
            restore.callback(_restore_generate, model, had_own_generate, own_generate)
            restore.callback(model.register_forward_pre_hook(_before_forward, with_kwargs=True).remove)
            restore.callback(model.register_forward_hook(_after_forward, with_kwargs=True).remove)
            yield model
    finally:
        model.train(was_training)


def _restore_generate(model: PreTrainedModel, had_own: bool, own: Any) -> None:
    """Put back the instance attribute `generate` the model had before the block, or remove ours."""
    if had_own:
        model.generate = own
    else:
        del model.generate


def _compressed_generate(model: PreTrainedModel, engine: Engine, kv_size: int | None, generate: Any,
                         header_ids: list[int]) -> Any:
    """`generate` that checks the call, allocates a `RaggedHFCache` for its prompts (each with the header tokens it
    ends with: `header_ids`, or none) and passes it on."""

    positional = list(inspect.signature(generate).parameters)

    @functools.wraps(generate)
    def wrapper(*args, **kwargs):
        kwargs.update(zip(positional, args))  # by name from here on (generate's own positional order)
        prompt_ids = kwargs.get("input_ids", kwargs.get("inputs"))
        max_new_tokens = check_generate_call(model, prompt_ids, kwargs)
        prompts = check_prompt_ids(prompt_ids.tolist(), model.config, max_new_tokens)
        headers = [trailing_header(ids, header_ids) for ids in prompts]
        check_kv_size(kv_size, engine.method, max(headers))
        kwargs["past_key_values"] = allocate(engine, prompts, kv_size, headroom=max_new_tokens - 1, headers=headers)
        return generate(**kwargs)

    return wrapper


def check_generate_call(model: PreTrainedModel, prompt_ids: object, kwargs: dict) -> int:
    """Refuse what the compressed cache cannot do, naming the argument; return the call's max_new_tokens.

    `prompt_ids` is the call's int64 `[batch, n]` input ids; the generation config is resolved as transformers does
    it (the call's `generation_config`, else the model's, updated with the call's keywords) without writing either.
    """
    if kwargs.get("inputs_embeds") is not None or not isinstance(prompt_ids, torch.Tensor) or prompt_ids.ndim != 2:
        raise ValueError(f"{WHERE}, generate needs input_ids as an int tensor [batch, tokens] (not inputs_embeds)")
    for name in ("past_key_values", "assistant_model"):
        if kwargs.get(name) is not None:
            why = "generate makes its own compressed cache" if name == "past_key_values" else (
                "assisted decoding verifies several tokens per step")
            raise ValueError(f"{name} is not supported {WHERE}: {why}")
    mask = kwargs.get("attention_mask")
    if mask is not None and not bool((mask == 1).all()):
        raise ValueError(
            f"attention_mask has padding (zeros), which is not supported {WHERE}: generate one prompt per call, or a "
            "batch of prompts of equal length without padding"
        )
    user_config = kwargs.get("generation_config")
    config, _ = model._prepare_generation_config(  # transformers' own resolution; writes no config
        user_config, **{k: v for k, v in kwargs.items() if k != "generation_config"}
    )
    refused = {
        "num_beams": (config.num_beams != 1, "beam search reorders caches; use num_beams=1"),
        "num_return_sequences": (
            config.num_return_sequences not in (None, 1), "repeat the prompt in the batch instead (one row each)"),
        "prompt_lookup_num_tokens": (
            config.prompt_lookup_num_tokens is not None, "assisted decoding verifies several tokens per step"),
        "prefill_chunk_size": (config.prefill_chunk_size is not None, "each prompt is prefilled in one forward"),
        "use_cache": (config.use_cache is False, "the compressed cache is the point"),
    }
    for name, (bad, why) in refused.items():
        if bad:
            raise ValueError(f"{name}={getattr(config, name)!r} is not supported {WHERE}: {why}")
    default_length = kwargs.get("max_length") is None and all(
        c is None or c.max_length is None for c in (user_config, model.generation_config))
    return new_tokens_bound(config, prompt_ids.shape[1], default_length, model.config.max_position_embeddings)


def new_tokens_bound(config: GenerationConfig, prompt_len: int, default_length: bool, context: int) -> int:
    """The most tokens `generate` adds to a `prompt_len`-token prompt under the resolved `config`, as
    transformers' `_prepare_generated_length` decides it: `max_new_tokens`; else, when no `max_length` was given
    anywhere (`default_length`), `config.max_length` new tokens within the `context`; else `max_length` minus the
    prompt. At least 1 (transformers itself refuses a `max_length` the prompt already reaches)."""
    if config.max_new_tokens is not None:
        new_tokens = config.max_new_tokens
    elif default_length:
        new_tokens = min(config.max_length, context - prompt_len)
    else:
        new_tokens = config.max_length - prompt_len
    return max(new_tokens, 1)


def allocate(engine: Engine, prompts: list[list[int]], kv_size: int | None, headroom: int,
             headers: list[int]) -> RaggedHFCache:
    """A `RaggedHFCache` for a batch of equal-length prompts with its prefill pending: the next forward on it runs
    full attention and compresses each batch row into its own sequence (`ModelRunner.allocate`, as the Engine's
    prefill does per prompt).

    Args:
        prompts: checked token ids, one list per batch row. headroom: decode rows reserved in every segment.
        headers: per row, the chat-template header tokens it ends with (0: the plain window).
    """
    variants = [Variant(row, engine.method, kv_size, header) for row, header in enumerate(headers)]
    cache, compressors = engine.runner.allocate([len(ids) for ids in prompts], variants, headroom)

    def compress_rows(layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> None:
        """query `[B, Hq, n, D]`, key/value `[B, Hkv, n, D]`: row b goes to sequence b."""
        for row, compressor in enumerate(compressors):
            compressor(layer, query[row : row + 1], key[row : row + 1], value[row : row + 1], scale)

    cache.prefill_hook = compress_rows
    _GENERATE_CACHES.add(cache)
    return cache


def _cache_of(args: tuple, kwargs: dict) -> RaggedHFCache | None:
    """The forward's cache when `allocate` made it for a generate call; None for an Engine's own cache; any other
    forward is refused. generate passes the cache as a keyword; positional arguments are searched too."""
    cache = next((a for a in (*args, *kwargs.values()) if isinstance(a, RaggedHFCache)), None)
    if cache is None:
        raise RuntimeError(
            f"{WHERE} the model runs only through model.generate (or a raggedkv Engine); call it after the block"
        )
    return cache if cache in _GENERATE_CACHES else None


def _before_forward(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    """Decode steps: one new token per row, within the cache's headroom (checked on the host before the step)."""
    cache = _cache_of(args, kwargs)
    if cache is None or cache.prefill_hook is not None:
        return
    ragged = cache.ragged
    new_tokens = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[1]
    if new_tokens != 1:
        raise RuntimeError(f"{WHERE}, a decode forward feeds one token per sequence, got {new_tokens}")
    if ragged.decode_steps >= ragged.headroom:
        raise RuntimeError(
            f"decode step {ragged.decode_steps + 1}: all {ragged.headroom} rows of decode headroom are used (the "
            f"cache was sized for max_new_tokens={ragged.headroom + 1})"
        )


def _after_forward(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    """After the prefill: plan decode attention; after a decode step: count it (`get_seq_length` reads the count)."""
    cache = _cache_of(args, kwargs)
    if cache is None:
        return
    if cache.prefill_hook is not None:
        cache.prefill_hook = None
        cache.plan_decode()
    else:
        cache.ragged.decode_steps += 1
