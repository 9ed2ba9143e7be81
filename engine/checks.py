"""Validation of user-facing arguments: every error names the argument, its value and what would be accepted."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PretrainedConfig


def check_kv_size(kv_size: object, window: int) -> None:
    """`kv_size` is None (no compression) or an int >= the observation window."""
    if kv_size is None:
        return
    if isinstance(kv_size, bool) or not isinstance(kv_size, int):
        raise TypeError(f"kv_size must be an int (tokens kept per head, window included) or None, got {kv_size!r}")
    if kv_size < window:
        raise ValueError(
            f"kv_size={kv_size} is below the method's observation window ({window}); use kv_size >= {window}"
        )


def check_text_prompts(prompt: object) -> list[str]:
    """A non-empty string or a non-empty list of non-empty strings, as a list."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompt must be a str or a list of str, got {type(prompt).__name__}")
    if not prompts:
        raise ValueError("prompt is an empty list; give at least one prompt")
    for i, p in enumerate(prompts):
        if not p.strip():
            raise ValueError(f"prompt {i} is empty ({p!r}); give some text")
    return list(prompts)


def check_prompt_ids(
    prompt_ids: object, config: PretrainedConfig, max_new_tokens: int
) -> list[list[int]]:
    """A non-empty list of non-empty token-id lists that fit, with `max_new_tokens`, in the model's context."""
    if not isinstance(prompt_ids, Sequence) or not prompt_ids:
        raise ValueError(f"prompt_ids must be a non-empty list of token-id lists, got {prompt_ids!r:.80}")
    context = config.max_position_embeddings
    sliding_window = getattr(config, "sliding_window", None)
    checked = []
    for i, ids in enumerate(prompt_ids):
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        if not isinstance(ids, Sequence) or not all(isinstance(t, int) for t in ids):
            raise TypeError(f"prompt {i} must be a list of int token ids, got {type(ids).__name__}")
        if not ids:
            raise ValueError(f"prompt {i} is empty (0 tokens); give at least one token")
        bad = [t for t in ids if not 0 <= t < config.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside [0, {config.vocab_size}): {bad[:5]}")
        if len(ids) > context:
            raise ValueError(
                f"prompt {i} has {len(ids)} tokens, longer than the model's context of {context} tokens "
                "(max_position_embeddings)"
            )
        last_position = len(ids) + max_new_tokens - 2  # of the last token fed to the model
        if last_position >= context:
            raise ValueError(
                f"prompt {i} ({len(ids)} tokens) plus max_new_tokens={max_new_tokens} exceeds the model's context "
                f"of {context} tokens; lower max_new_tokens to at most {context - len(ids) + 1}"
            )
        if sliding_window is not None and last_position >= sliding_window:
            raise ValueError(
                f"prompt {i} ({len(ids)} tokens) plus max_new_tokens={max_new_tokens} exceeds the model's "
                f"sliding_window={sliding_window}, which the ragged cache does not implement; set "
                "config.sliding_window = None to run the model with full attention"
            )
        checked.append(list(ids))
    return checked


def check_sampling(max_new_tokens: object, temperature: object, top_p: object, seed: object) -> None:
    """max_new_tokens >= 1, temperature >= 0, 0 < top_p <= 1, seed None or int."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
