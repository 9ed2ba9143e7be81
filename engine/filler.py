"""Deterministic filler prose for needle-in-a-haystack prompts, from a sentence grammar the caller supplies.

The head-scoring haystack (`raggedkv.engine.heads.haystack`) and the evaluation haystack
(`raggedkv.engine.eval.haystack`) are different texts written for this project; both are streams of sentences
from a seeded random generator, grouped into paragraphs of 4 to 8 sentences.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import cache

PARAGRAPH_SENTENCES = (4, 8)

SentenceMaker = Callable[[random.Random], str]


def capitalize(text: str) -> str:
    """`text` with its first letter upper-cased (the rest untouched)."""
    return text[0].upper() + text[1:]


@cache
def _sentence_block(make_sentence: SentenceMaker, count: int, seed: int) -> tuple[str, ...]:
    rng = random.Random(seed)
    sentences: list[str] = []
    left = rng.randint(*PARAGRAPH_SENTENCES)
    for _ in range(count):
        sentence = make_sentence(rng)
        left -= 1
        if left == 0:  # the paragraph ends after this sentence
            sentence, left = sentence + "\n\n", rng.randint(*PARAGRAPH_SENTENCES)
        sentences.append(sentence)
    return tuple(sentences)


def sentence_stream(make_sentence: SentenceMaker, count: int, seed: int) -> tuple[str, ...]:
    """The first `count` sentences of the stream `make_sentence` draws with `random.Random(seed)`.

    A paragraph's last sentence ends with a blank line. The same seed always gives the same text, and a shorter
    request is a prefix of a longer one.

    Raises:
        ValueError: `count` is negative.
    """
    if count < 0:
        raise ValueError(f"count={count} must be >= 0")
    block = 1 << max(count - 1, 0).bit_length()  # cache powers of two, each a prefix of the next
    return _sentence_block(make_sentence, max(block, 1), seed)[:count]
