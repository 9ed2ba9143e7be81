"""Needle-in-a-haystack prompts for head scoring, and the answer span's location in the prompt's token ids.

Layout as in the published detection scripts (METHODS.md 1(a)): the haystack is trimmed to
`length - BUFFER_TOKENS - |needle|` tokens, the needle goes in at a sentence boundary at `depth` percent of it, and
the question follows: `<context>\\n\\nBased on the content of the book, Question: <question>\\nAnswer:`. With
`chat=True` the same text is the user turn of the tokenizer's chat template (the published R script does this for
Qwen). A `length` of 0 leaves the needle alone in the context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..chat_header import header_length
from .haystack import haystack_sentences
from .needles import Needle

BUFFER_TOKENS = 200  # the published `final_context_length_buffer`: room for the question and the answer
SPAN_MATCH = 0.9  # the fraction of answer tokens a fuzzy span match must reproduce (the published overlap > 0.9)
QUESTION_TEMPLATE = "Based on the content of the book, Question: {question}\nAnswer:"


@dataclass(frozen=True, slots=True)
class TrialPrompt:
    """A tokenised trial: the prompt's ids, the answer span `[start, end)` inside them, and how many of the ids, at
    the end, are the chat template's assistant header (`chat_header.header_length`; 0 without the template)."""

    ids: list[int]
    span: tuple[int, int]
    header: int = 0


def _count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def build_context(tokenizer, needle_text: str, length: int, depth: float) -> str:
    """Filler of at most `length - BUFFER_TOKENS - |needle|` tokens (whole sentences) with `needle_text` inserted at
    the sentence boundary nearest to `depth` percent of the filler's tokens (the published scripts walk back to the
    previous sentence end instead)."""
    if not 0 <= depth <= 100:
        raise ValueError(f"depth={depth} must be a percentage in [0, 100]")
    if length < 0:
        raise ValueError(f"length={length} must be >= 0 tokens")
    budget = length - BUFFER_TOKENS - _count_tokens(tokenizer, " " + needle_text) if length else 0
    sentences: list[str] = []
    counts: list[int] = []
    for sentence in haystack_sentences(max(budget, 0) // 4):  # a filler sentence has more than 4 tokens
        count = _count_tokens(tokenizer, " " + sentence)
        if sum(counts) + count > budget:
            break
        sentences.append(sentence)
        counts.append(count)
    target, before, index = sum(counts) * depth / 100, 0, 0
    while index < len(counts) and before + counts[index] / 2 <= target:  # the boundary nearest to the target
        before += counts[index]
        index += 1
    parts = [*sentences[:index], needle_text, *sentences[index:]]
    return " ".join(parts).replace("\n\n ", "\n\n").strip()


def render_prompt(tokenizer, context: str, question: str, chat: bool) -> str:
    """The full prompt text; with `chat`, the context and question form the user turn of the chat template."""
    text = f"{context}\n\n{QUESTION_TEMPLATE.format(question=question)}"
    if not chat:
        return text
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def locate_span(prompt_ids: Sequence[int], *answers: Sequence[int]) -> tuple[int, int]:
    """The `[start, end)` positions of the answer's tokens in the prompt.

    `answers` are tokenisations of the same answer (with and without a leading space, say); the first exact
    occurrence of the first one that occurs wins. Tokenisation at the needle's edges can differ from the answer
    tokenised alone (a merged newline), so failing that, the window with the most position-wise equal tokens wins
    (the first on ties) if at least `SPAN_MATCH` of its tokens are equal.

    Raises:
        ValueError: no answer given or an empty one, or no window matches well enough.
    """
    prompt = list(prompt_ids)
    if not answers or not all(answers):
        raise ValueError("the answer has no tokens")
    best = (-1, 0, 1)  # (equal tokens, start, size)
    for answer in map(list, answers):
        size = len(answer)
        for start in range(len(prompt) - size + 1):
            equal = sum(p == a for p, a in zip(prompt[start:start + size], answer))
            if equal == size:
                return start, start + size
            if equal / size > best[0] / best[2]:
                best = (equal, start, size)
    equal, start, size = best
    if equal < SPAN_MATCH * size:
        raise ValueError(f"the answer's tokens are not in the prompt (the best window matches {max(equal, 0)} of "
                         f"{size})")
    return start, start + size


def build_trial_prompt(tokenizer, needle: Needle, length: int, depth: float, chat: bool) -> TrialPrompt:
    """Tokenise the trial's prompt (with the tokenizer's special tokens) and locate the needle's answer span."""
    context = build_context(tokenizer, needle.text, length, depth)
    text = render_prompt(tokenizer, context, needle.question, chat)
    ids = list(tokenizer(text, add_special_tokens=not chat).input_ids)
    answers = [tokenizer(prefix + needle.answer, add_special_tokens=False).input_ids for prefix in (" ", "")]
    header = header_length(tokenizer, text, render_prompt(tokenizer, context, needle.question, False), ids) if chat \
        else 0
    return TrialPrompt(ids=ids, span=locate_span(ids, *answers), header=header)
