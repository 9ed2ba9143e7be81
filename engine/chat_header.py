"""A prompt as a chat user turn, and the length of the assistant header that ends it.

`apply_chat_template(..., add_generation_prompt=True)` puts template tokens after the user's text: the turn's
end-of-turn tokens when the template closes the turn after the content, then the assistant header. For
SmolLM2-Instruct that is ``<|im_end|> \\n <|im_start|> ass istant \\n``, 6 tokens. These header tokens are what the
question-aware window (`compress.with_header`) keeps in every head and leaves out of scoring.

The header is decided from token ids: the prompt's ids minus their longest common prefix with the ids of the
templated text cut right after the user's content. A content token that the tokenizer merges with the template
text after it therefore counts as header (kept, never dropped), and a template that rewrites the content (so that
it is not found verbatim in the templated text) gets no header: the plain window then scores, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

PROBE = "Which one is it?"  # user content for finding the header a template puts after any user turn


def encode_user_turn(tokenizer: PreTrainedTokenizerBase, content: str) -> tuple[list[int], int]:
    """Token ids of `content` as a user turn of the tokenizer's chat template with the generation prompt, and how
    many of them, at the end, are the template's header (0 when it cannot be found: see the module docstring)."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids, header_length(tokenizer, text, content, ids)


def header_length(tokenizer: PreTrainedTokenizerBase, text: str, content: str, ids: list[int]) -> int:
    """Tokens of `ids` (the tokens of the templated `text`) after the last occurrence of `content` in `text`;
    0 when `content` is empty or absent from `text`."""
    start = text.rfind(content)
    if not content or start < 0:
        return 0
    before = tokenizer(text[: start + len(content)], add_special_tokens=False)["input_ids"]
    common = 0
    for ours, theirs in zip(before, ids):
        if ours != theirs:
            break
        common += 1
    return len(ids) - common


def assistant_header_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The header token ids the tokenizer's chat template puts after a user turn's content (`encode_user_turn` of a
    probe question); empty when the tokenizer has no chat template or the header cannot be found."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    ids, header = encode_user_turn(tokenizer, PROBE)
    return ids[len(ids) - header :]


def trailing_header(prompt_ids: Sequence[int], header_ids: Sequence[int]) -> int:
    """`len(header_ids)` when `prompt_ids` ends with `header_ids` and has a token before them (the user's), else 0:
    the `header_tokens` of token ids templated elsewhere (`raggedkv.compressed`)."""
    size = len(header_ids)
    return size if 0 < size < len(prompt_ids) and list(prompt_ids[-size:]) == list(header_ids) else 0
