"""The head-scoring needles, written for this project.

Retrieval needles (HeadKV-R and CompressKV's semantic variant) are one sentence and a question whose answer is the
sentence itself, as in the published detection scripts. Retrieval-reasoning needles (HeadKV-R2, the paper's
Figure 2) hold the answer sentence, a distractor sentence of the same form about another person, and two facts the
question reasons over (the people's ages, or their jobs); the answer span is the answer sentence only. The answer
sits first in half of the reasoning needles and second in the other half, so a model that always copies the same
position cannot pass them all.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Needle:
    """Text inserted into the haystack, the question asked about it, and the answer span (a substring of `text`)."""

    text: str
    question: str
    answer: str

    def __post_init__(self) -> None:
        if self.answer not in self.text:
            raise ValueError(f"answer {self.answer!r} is not a substring of the needle text {self.text!r}")


_PARROT = "The best way to calm a nervous parrot is to hum a slow lullaby and offer it a slice of ripe mango."
_PANCAKE = ("The secret to a perfect pancake is to let the batter rest for ten minutes and cook it on a cast iron pan "
            "with salted butter.")
_ASTRONAUTS = ("The astronauts celebrated the end of their mission by playing chess and eating strawberry ice cream "
               "in orbit.")

RETRIEVAL_NEEDLES: tuple[Needle, ...] = (
    Needle(_PARROT, "What is the best way to calm a nervous parrot?", _PARROT),
    Needle(_ASTRONAUTS, "How did the astronauts celebrate the end of their mission?", _ASTRONAUTS),
    Needle(_PANCAKE, "What is the secret to a perfect pancake?", _PANCAKE),
)

_PRIYA = "Priya's weekend plan is to hike up Cedar Ridge and watch the sunrise with a flask of cocoa."
_TOMAS = "Tomas's weekend plan is to repair his old bicycle and bake a loaf of rye bread."
_AGES = f"{_PRIYA} {_TOMAS} Tomas is 34 years old. Priya is 29 years old."
_JOBS = f"{_PRIYA} {_TOMAS} Tomas works as a pilot. Priya works as a nurse."

REASONING_NEEDLES: tuple[Needle, ...] = (
    Needle(_AGES, "What is the weekend plan of the younger one between Priya and Tomas?", _PRIYA),
    Needle(_AGES, "What is the weekend plan of the older one between Priya and Tomas?", _TOMAS),
    Needle(_JOBS, "What is the weekend plan of the nurse?", _PRIYA),
    Needle(_JOBS, "What is the weekend plan of the pilot?", _TOMAS),
)


def needles_for(kind: str) -> tuple[Needle, ...]:
    """The needles a score kind runs: reasoning needles for ``"reasoning"``, retrieval needles otherwise."""
    return REASONING_NEEDLES if kind == "reasoning" else RETRIEVAL_NEEDLES
