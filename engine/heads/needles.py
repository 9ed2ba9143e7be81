"""The head-scoring needles, written for this project.

Retrieval needles (HeadKV-R and CompressKV's semantic variant) are one sentence and a question whose answer is the
sentence itself, as in the published detection scripts. Retrieval-reasoning needles (HeadKV-R2, the paper's
Figure 2) hold the answer sentence, a distractor sentence of the same form about another person, and two facts the
question reasons over; the answer span is the answer sentence only.

Reasoning needles, version 2: two people's weekend plans, then their jobs, and "What is the weekend plan of the
<job>?". The plan sentences never name the job, so the answer takes one inference step over two stated facts
(job -> person -> plan). The answer sits first in half of the needles and second in the other half. Version 1
(ages, younger / older; jobs, nurse / pilot) passed 13 of 80 trials on SmolLM2-135M-Instruct: the model restates
the question and then copies whichever plan it prefers, or haystack text. It prefers the garden-fence plan to the
canoe plan whoever holds it, so version 2 gives every question that plan as its answer, in both positions and
under three pairs of names and jobs; the mirror question (the other job, same text) got the fence plan in 11 of
12 trials (each text at 500 tokens, depths 40 and 80).
So for this model the accepted trials show where the heads look while the right sentence is produced, not that
the model did the inference. A model that always copies one position still fails half the needles.
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

_FENCE = "weekend plan is to paint {pronoun} garden fence and plant a row of tulip bulbs."
_CANOE = "weekend plan is to paddle a canoe across Lake Wren and photograph the grey herons."


def _plans_and_jobs(first: tuple[str, str, str], second: tuple[str, str, str], plans: tuple[str, str],
                    question_job: str) -> Needle:
    """Two people's plan sentences (`first`'s, then `second`'s), then their jobs in the other order, and the
    question about the plan of the person with `question_job`; each person is `(name, pronoun, job)`."""
    sentences = [f"{name}'s {plan.format(pronoun=pronoun)}" for (name, pronoun, _), plan in zip((first, second), plans)]
    jobs = " ".join(f"{name} works as a {job}." for name, _, job in (second, first))
    answer = sentences[0] if question_job == first[2] else sentences[1]
    return Needle(f"{sentences[0]} {sentences[1]} {jobs}", f"What is the weekend plan of the {question_job}?", answer)


_DORIT, _LEOPOLD = ("Dorit", "her", "pharmacist"), ("Leopold", "his", "baker")
_OTTAVIA, _RASMUS = ("Ottavia", "her", "plumber"), ("Rasmus", "his", "dentist")
_HEDDA, _JOAQUIN = ("Hedda", "her", "carpenter"), ("Joaquin", "his", "chemist")

REASONING_NEEDLES_VERSION = 2  # bump when the reasoning needles change: trial logs of other versions are refused
REASONING_NEEDLES: tuple[Needle, ...] = (
    _plans_and_jobs(_DORIT, _LEOPOLD, (_FENCE, _CANOE), "pharmacist"),
    _plans_and_jobs(_DORIT, _LEOPOLD, (_CANOE, _FENCE), "baker"),
    _plans_and_jobs(_OTTAVIA, _RASMUS, (_FENCE, _CANOE), "plumber"),
    _plans_and_jobs(_OTTAVIA, _RASMUS, (_CANOE, _FENCE), "dentist"),
    _plans_and_jobs(_JOAQUIN, _HEDDA, (_FENCE, _CANOE), "chemist"),
    _plans_and_jobs(_JOAQUIN, _HEDDA, (_CANOE, _FENCE), "carpenter"),
)
RETRIEVAL_NEEDLES_VERSION = 1


def needles_for(kind: str) -> tuple[Needle, ...]:
    """The needles a score kind runs: reasoning needles for ``"reasoning"``, retrieval needles otherwise."""
    return REASONING_NEEDLES if kind == "reasoning" else RETRIEVAL_NEEDLES


def needles_version(kind: str) -> int:
    """The version of `needles_for(kind)`, recorded in trial logs and sidecars."""
    return REASONING_NEEDLES_VERSION if kind == "reasoning" else RETRIEVAL_NEEDLES_VERSION
