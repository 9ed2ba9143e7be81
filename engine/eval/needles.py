"""The evaluation's own needles: retrieval facts for NIAH and one-step reasoning facts with distractors.

They are unrelated to the head-scoring needles (engine/heads) and to the haystack's vocabulary, so a correct answer
can only come from the inserted sentence. `answers` and `distractor_answers` are aliases matched as whole words
after LongBench's answer normalisation (`judge.mentions`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Needle:
    """A retrieval needle: one sentence with a key fact, the question about it and the key fact's aliases."""

    id: str
    sentence: str
    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReasoningNeedle:
    """A retrieval-reasoning needle: the fact, a distractor of the same form about other (or the same) entities,
    a question whose answer takes one reasoning step over the fact, and the answer the distractor would give."""

    id: str
    fact: str
    distractor: str
    question: str
    answers: tuple[str, ...]
    distractor_answers: tuple[str, ...]


NEEDLES: tuple[Needle, ...] = (
    Needle(
        "stew",
        "The secret ingredient in Captain Ilsabet's famous fish stew is a spoonful of candied ginger.",
        "What is the secret ingredient in Captain Ilsabet's famous fish stew?",
        ("candied ginger",),
    ),
    Needle(
        "password",
        "The password that opens the old observatory on Tern Hill is violet compass.",
        "What is the password that opens the old observatory on Tern Hill?",
        ("violet compass",),
    ),
    Needle(
        "raffle",
        "The winning ticket in the Marlow county raffle was number 4817.",
        "What was the number of the winning ticket in the Marlow county raffle?",
        ("4817",),
    ),
    Needle(
        "hobby",
        "The retired pilot Ingrid Falk likes to spend rainy afternoons building tiny ships inside glass bottles.",
        "How does the retired pilot Ingrid Falk like to spend rainy afternoons?",
        ("ships inside glass bottles", "ships in bottles", "ships in glass bottles"),
    ),
    Needle(
        "bell",
        "The lost lighthouse bell was finally pulled up from the bottom of Lake Ottergrave.",
        "Where was the lost lighthouse bell finally pulled up from?",
        ("lake ottergrave", "ottergrave"),
    ),
    Needle(
        "orchid",
        "The rare saffron orchid that Professor Lindqvist discovered only blooms in the month of November.",
        "In which month does the rare saffron orchid discovered by Professor Lindqvist bloom?",
        ("november",),
    ),
)

REASONING_NEEDLES: tuple[ReasoningNeedle, ...] = (  # easiest first for a small model: `needles=N` takes the first N
    ReasoningNeedle(
        "boathouse",
        "The spare key to the boathouse hangs on a hook in the kitchen of the lighthouse.",
        "The spare key to the woodshed hangs on a hook in the kitchen of the vicarage.",
        "In which building is the spare key to the boathouse?",
        ("lighthouse",),
        ("vicarage",),
    ),
    ReasoningNeedle(
        "hats",
        "Ida and Konrad traded hats, and before the trade Ida wore the green hat.",
        "Ulla and Bruno traded hats, and before the trade Ulla wore the orange hat.",
        "Which hat does Konrad wear now?",
        ("green",),
        ("orange",),
    ),
    ReasoningNeedle(
        "thimble",
        "The silver thimble is in the sewing box that sits on the piano in the music room.",
        "The copper thimble is in the sewing box that sits on the dryer in the laundry room.",
        "In which room is the silver thimble?",
        ("music room",),
        ("laundry room",),
    ),
    ReasoningNeedle(
        "bicycles",
        "Elias and Maren swapped bicycles, and before the swap Elias had the yellow bicycle.",
        "Jonas and Freya swapped bicycles, and before the swap Jonas had the purple bicycle.",
        "Which bicycle does Maren have now?",
        ("yellow",),
        ("purple",),
    ),
    ReasoningNeedle(
        "wedding",
        "Lucia married her sweetheart in the month of December.",
        "Greta married her sweetheart in the month of July.",
        "In which season of the year did Lucia marry?",
        ("winter",),
        ("summer",),
    ),
    ReasoningNeedle(
        "birthplace",
        "The violinist Ottilie Brandt was born in Lisbon.",
        "The cellist Bertram Hale was born in Oslo.",
        "In which country was the violinist Ottilie Brandt born?",
        ("portugal",),
        ("norway",),
    ),
)
