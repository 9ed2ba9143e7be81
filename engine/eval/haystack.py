"""The evaluation haystack: an original, deterministic filler text, and prompts fitted to an exact token length.

The filler is a made-up naturalist's logbook of a river valley, generated sentence by sentence from templates and
word lists with a fixed seed, so every run and every machine sees the same text. Prompts of different lengths
share one filler stream (a longer prompt extends a shorter one), as in the published NIAH runners, and inserted
sentences (needles, distractors) sit at sentence boundaries at the requested depth, measured in tokens.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import cache

from ..filler import capitalize, sentence_stream

HAYSTACK_VERSION = 1  # bump when the text changes: results files record it, so old results are not mixed in

_PLACES = (
    "the northern ridge", "the salt marsh", "the lower terraces", "the cedar hollow", "the chalk downs",
    "the eastern shoals", "the reed beds", "the high pasture", "the river delta", "the fir plantation",
    "the limestone caves", "the heather slopes", "the alder carr", "the shingle spit", "the beech hanger",
    "the sheep walk", "the gravel bar", "the oxbow pool", "the birch scrub", "the western weir",
)
_CREATURES = (
    "curlews", "otters", "red deer", "dragonflies", "swallows", "hares", "herons", "field mice", "kestrels",
    "badgers", "grass snakes", "moths", "lapwings", "water voles", "bats", "stoats", "snipe", "wrens",
)
_WEATHER = (
    "a light drizzle", "a dry easterly wind", "thick morning mist", "a sudden hailstorm", "clear skies",
    "low cloud", "a warm southerly breeze", "steady rain", "a hard frost", "patchy sunshine", "a humid haze",
    "gusty showers",
)
_TIMES = (
    "At dawn", "By midday", "Late in the afternoon", "Shortly after dusk", "Before the first frost",
    "During the spring thaw", "In the second week of the month", "Towards the end of the month", "Early one morning",
    "On the following day",
)
_OBSERVERS = (
    "the warden", "a visiting surveyor", "the schoolteacher", "two volunteers", "the night watchman",
    "a retired geologist", "the county ecologist", "a group of students", "the shepherd", "an amateur painter",
)
_PLANTS = (
    "bell heather", "marsh marigold", "eyebright", "wild thyme", "meadowsweet", "ragged robin", "bog cotton",
    "sea campion", "wood sorrel", "common knapweed",
)
_TREES = ("willow", "oak", "ash", "hawthorn", "rowan", "hazel", "poplar", "larch")
_MATERIALS = ("chestnut", "wire", "stone", "hazel", "timber")
_MOODS = ("calm", "wet", "blustery", "mild", "cold", "settled")
_COMPARISONS = ("noticeably higher", "slightly lower", "far lower", "a little higher", "much higher")

_TEMPLATES = (
    "{time}, {observer} recorded {weather} over {place}.",
    "{Creatures} were seen feeding along {place} for most of the day.",
    "The water level near {place} rose by {n} centimetres after {weather}.",
    "{Observer} noted that the path to {place} had become muddy and hard to follow.",
    "Counts of {creatures} around {place} were {comparison} than in the previous year.",
    "{time}, the temperature on {place} fell to {small} degrees.",
    "A fallen {tree} blocked the track between {place} and {place2} until it was cleared.",
    "{Observer} mended a stretch of {material} fencing beside {place}.",
    "The soil on {place} is thin and stony, so little except {plant} grows there.",
    "Several {creatures} were heard calling from {place} long before sunrise.",
    "{time}, {observer} walked from {place} to {place2} and counted {n} {creatures}.",
    "Old maps show a footbridge near {place}, although nothing of it remains today.",
    "The logbook entry for that day mentions only {weather} and a {mood} evening.",
    "{Plant} flowered early on {place} this season.",
    "Because of {weather}, the survey of {place} was put off for {small} days.",
    "People in the valley say that {weather} over {place} usually means a {mood} week ahead.",
    "A {tree} on the edge of {place} lost a large branch in the night.",
    "{Observer} photographed {creatures} resting on the bank below {place}.",
)


def _sentence(rng: random.Random) -> str:
    place, place2 = rng.sample(_PLACES, 2)
    creatures, observer, plant = rng.choice(_CREATURES), rng.choice(_OBSERVERS), rng.choice(_PLANTS)
    return rng.choice(_TEMPLATES).format(
        time=rng.choice(_TIMES), observer=observer, Observer=capitalize(observer), weather=rng.choice(_WEATHER),
        place=place, place2=place2, creatures=creatures, Creatures=capitalize(creatures), plant=plant,
        Plant=capitalize(plant),
        n=rng.randint(3, 60), small=rng.randint(2, 9), tree=rng.choice(_TREES), material=rng.choice(_MATERIALS),
        mood=rng.choice(_MOODS), comparison=rng.choice(_COMPARISONS),
    )


def filler_sentences(count: int, seed: int = 0) -> tuple[str, ...]:
    """The first `count` filler sentences (deterministic; a paragraph-ending sentence ends with a blank line)."""
    return sentence_stream(_sentence, count, seed)


def join_with_insertions(sentences: Sequence[str], insertions: Sequence[tuple[int, str]]) -> str:
    """Join sentences with spaces, putting each inserted sentence before the sentence of its index (an index of
    `len(sentences)` appends it). Insertions at the same index keep their given order."""
    parts: list[str] = []
    ordered = sorted(enumerate(insertions), key=lambda item: (item[1][0], item[0]))
    cursor = 0
    for _, (index, text) in ordered:
        parts.extend(sentences[cursor:index])
        parts.append(text)
        cursor = max(cursor, index)
    parts.extend(sentences[cursor:])
    return " ".join(parts).replace("\n\n ", "\n\n").strip()


def boundary_at_depth(token_counts: Sequence[int], depth: float) -> int:
    """The sentence boundary (0..len) whose preceding token count is closest to `depth` percent of the total."""
    if not 0 <= depth <= 100:
        raise ValueError(f"depth={depth} must be a percentage in [0, 100]")
    total = sum(token_counts)
    target, before, best, best_gap = total * depth / 100, 0, 0, float("inf")
    for index in range(len(token_counts) + 1):
        if abs(before - target) < best_gap:
            best, best_gap = index, abs(before - target)
        if index < len(token_counts):
            before += token_counts[index]
    return best


def fit_haystack(
    render: Callable[[str], str],
    count_tokens: Callable[[str], int],
    target_tokens: int,
    insertions: Sequence[tuple[float, str]],
    seed: int = 0,
    filler: Callable[[int, int], Sequence[str]] = filler_sentences,
) -> tuple[str, int]:
    """The longest prompt `render(context)` of at most `target_tokens` tokens, where the context is filler with each
    `(depth_percent, sentence)` inserted at the sentence boundary closest to that depth. `filler(count, seed)` gives
    the first `count` filler sentences (default: this module's logbook).

    Returns:
        (prompt, its token count). The count is at most `target_tokens` and within one filler sentence of it.

    Raises:
        ValueError: the prompt does not fit even with no filler at all.
    """

    sentence_tokens = cache(count_tokens)

    def build(n: int) -> tuple[str, int]:
        sentences = filler(n, seed)
        counts = [sentence_tokens(sentence) for sentence in sentences]
        placed = [(boundary_at_depth(counts, depth), text) for depth, text in insertions]
        prompt = render(join_with_insertions(sentences, placed))
        return prompt, count_tokens(prompt)

    best = build(0)
    if best[1] > target_tokens:
        raise ValueError(f"length={target_tokens} tokens is too short: the prompt without filler has {best[1]}")
    low, high = 0, 1
    while (candidate := build(high))[1] <= target_tokens:  # grow until too long, then bisect
        low, best, high = high, candidate, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        candidate = build(mid)
        if candidate[1] <= target_tokens:
            low, best = mid, candidate
        else:
            high = mid
    return best
