"""Prompt plumbing shared by the evaluations: LongBench's middle truncation and the tokens that end an answer.

Chat wrapping is the engine's (`Engine.encode(text, chat_template=True)`), so every count and every prompt the
evaluations build goes through the same template the model is run with. The length of the template's assistant
header comes with the ids (`Engine.encode_with_header`), and `generation.Runner.sweep` passes it on, so every
evaluation scores with the question-aware window unless its `Runner` is built with `question_window=False`.
"""

from __future__ import annotations

from collections.abc import Sequence

# End-of-turn tokens of common chat models, stopped on when the vocabulary has them (with the model's EOS).
_END_OF_TURN = ("<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>", "</s>")


def truncate_middle(tokenizer, text: str, max_tokens: int) -> str:
    """LongBench's truncation: a text of more than `max_tokens` tokens (special tokens included) keeps its first and
    last `max_tokens // 2` tokens, each half decoded without special tokens and the two concatenated; a shorter
    text is unchanged."""
    if max_tokens < 2:
        raise ValueError(f"max_length={max_tokens} must be >= 2")
    ids = tokenizer(text)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    half = max_tokens // 2
    head, tail = ids[:half], ids[-half:]
    return tokenizer.decode(head, skip_special_tokens=True) + tokenizer.decode(tail, skip_special_tokens=True)


def stop_token_ids(tokenizer, eos_ids: Sequence[int] = (), newline: bool = False) -> list[int]:
    """Token ids that end an answer: `eos_ids` (the generation config's), the tokenizer's EOS, the end-of-turn
    tokens the vocabulary has, and (for samsum) the newline token."""
    ids = set(eos_ids)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in _END_OF_TURN if token in vocab)
    if newline:
        ids.add(tokenizer.encode("\n", add_special_tokens=False)[-1])
    return sorted(ids)


def cut_at_stop(token_ids: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """The generated tokens before the first stop token."""
    stops = set(stop_ids)
    for index, token in enumerate(token_ids):
        if token in stops:
            return list(token_ids[:index])
    return list(token_ids)
