"""Validation of user-facing arguments: every error names the argument, its value and what would be accepted."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PretrainedConfig

from .arguments import Int, Real
from .compress import with_header
from .methods import Method, not_a_method

MAX_NEW_TOKENS = Int(1)
TEMPERATURE = Real(0.0)
TOP_P = Real(0.0, 1.0, low_open=True)
SEED = Int(0, 2**64 - 1)  # torch.Generator.manual_seed's range


def check_kv_size(kv_size: object, method: object, header: int = 0) -> None:
    """`kv_size` is None (no compression) or an int >= the least the method keeps, whatever the prompt's length.

    That least is `method.min_kv_size`, plus `header` for a method that keeps a window: `header` is the longest
    chat-template assistant header among the prompts `kv_size` applies to (0 for none), which every head keeps on
    top of its window (`compress.with_header`). The one check of `kv_size`: the engine runs it before any planning.
    """
    if not isinstance(method, Method):
        raise not_a_method(method)
    if kv_size is None:
        return
    least = with_header(method, header).min_kv_size
    why = f"the least method {method.name!r} keeps per head; None keeps the whole prompt"
    if least > method.min_kv_size:
        why = (f"method {method.name!r} keeps {method.min_kv_size} tokens per head plus the prompt's {header}-token "
               "chat-template assistant header (question window on); None keeps the whole prompt, "
               "question_window=False (--no-question-window) drops the header's share")
    Int(least, why=why).check("kv_size", kv_size)


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


def check_header_tokens(header_tokens: object, prompts: list[list[int]]) -> list[int]:
    """One header length per prompt: an int for all of them, or a list of one int per prompt; each in
    `[0, len(prompt) - 1]` (at least one token before the header is the user's)."""
    headers = [header_tokens] * len(prompts) if isinstance(header_tokens, int) else header_tokens
    if isinstance(header_tokens, bool) or not isinstance(headers, Sequence) or len(headers) != len(prompts):
        raise ValueError(
            f"header_tokens must be an int or a list of {len(prompts)} ints (one per prompt), got {header_tokens!r:.80}"
        )
    for i, (header, ids) in enumerate(zip(headers, prompts)):
        Int(0, len(ids) - 1, why=f"prompt {i} has {len(ids)} tokens").check(f"header_tokens[{i}]", header)
    return list(headers)


def check_sampling(max_new_tokens: object, temperature: object, top_p: object, seed: object) -> None:
    """max_new_tokens an int >= 1; temperature a finite number >= 0 (0 = greedy); top_p a finite number in (0, 1];
    seed None or an int in [0, 2**64 - 1]. Booleans, NaN and infinities are refused."""
    MAX_NEW_TOKENS.check("max_new_tokens", max_new_tokens)
    TEMPERATURE.check("temperature", temperature)
    TOP_P.check("top_p", top_p)
    if seed is not None:
        SEED.check("seed", seed)
