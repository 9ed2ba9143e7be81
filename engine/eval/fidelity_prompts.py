"""The fidelity evaluation's own prompts: ten facts, a filler text and a template used nowhere else.

The facts, the filler (an invented mountain railway's operations diary) and the default lengths (about 1K and 2K
tokens) are different from the head-scoring needles and haystack (`engine/heads`, on which calibrated defaults
are chosen) and from the NIAH / reasoning needles and haystack (`needles.py`, `haystack.py`), so a method's
defaults are never measured on the data they were chosen on. A fact's answer sentence is the fact itself: the
reference continuation teacher-forced after the prompt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..filler import capitalize, sentence_stream

FIDELITY_VERSION = 1  # bump when the facts, filler or template change: results files record it


@dataclass(frozen=True, slots=True)
class Fact:
    """A fact inserted into the diary: its id, the sentence (also the gold answer) and the question about it."""

    id: str
    sentence: str
    question: str


FACTS: tuple[Fact, ...] = (
    Fact("vase", "The glassblower Oskar Wendt keeps his rarest blue vase in a cedar chest under the stairs.",
         "Where does the glassblower Oskar Wendt keep his rarest blue vase?"),
    Fact("choir", "The choir of Harrowgate Abbey rehearses every Thursday evening in the disused printing works.",
         "Where and when does the choir of Harrowgate Abbey rehearse?"),
    Fact("honey", "The beekeeper Marisol Quant sells her clover honey only at the midsummer fair in Dunmere.",
         "Where does the beekeeper Marisol Quant sell her clover honey?"),
    Fact("safe", "The combination of the museum's iron safe is seven, nineteen, forty-two.",
         "What is the combination of the museum's iron safe?"),
    Fact("insomnia", "Doctor Anselm Ruiz cured his insomnia by reading old atlases aloud before bed.",
         "How did Doctor Anselm Ruiz cure his insomnia?"),
    Fact("chess", "The champion of the Westerby chess club won the final with a knight sacrifice on move thirty.",
         "How did the champion of the Westerby chess club win the final?"),
    Fact("manuscript", "The lost manuscript of the poet Elda Vorn was found inside a hollow organ pipe.",
         "Where was the lost manuscript of the poet Elda Vorn found?"),
    Fact("scarf", "The mayor of Quillon always wears a scarf knitted from alpaca wool dyed indigo.",
         "What scarf does the mayor of Quillon always wear?"),
    Fact("ship", "The first ship built at the Fennick shipyard was named the Patient Heron.",
         "What was the name of the first ship built at the Fennick shipyard?"),
    Fact("kite", "The twins Hallie and Rune flew a kite shaped like a red dragon over the dunes at Corla.",
         "What kind of kite did the twins Hallie and Rune fly over the dunes at Corla?"),
)

CONTEXT_TEMPLATE = (
    "Below is the operations diary of a mountain railway. One sentence somewhere in it answers the question "
    "that follows.\n\n<diary>\n{context}\n</diary>\n"
)
"""The part of a prompt compressed in the question-agnostic setting (the diary and what introduces it). It ends
after the first of the two newlines that follow the diary: byte-level BPE tokenizers (SmolLM2's, GPT-2's) split
"\\n\\nUsing" as "\\n", "\\n", "Using", so cut there the two parts tokenize as the whole prompt does."""
QUESTION_TEMPLATE = (
    "\nUsing only the diary, answer the question by repeating that sentence.\n"
    "Question: {question}\nAnswer:"
)
"""The part asked of the compressed context in the question-agnostic setting."""
TEMPLATE = CONTEXT_TEMPLATE + QUESTION_TEMPLATE
"""A whole prompt (both settings measure the same text; the question-aware setting compresses all of it)."""

_STATIONS = (
    "Upper Kessel", "the summit halt", "Birchfold junction", "the viaduct signal box", "Lowmoor depot",
    "the tunnel portal", "Ashgill siding", "the water tower", "Crane Point", "the goods shed at Tarn End",
    "the passing loop", "Hollin Bank", "the turntable", "the north cutting", "Pikestone platform",
)
_STAFF = (
    "the stationmaster", "the fireman", "the relief driver", "the platelayers", "the signalman",
    "the booking clerk", "the track inspector", "the guard", "the fitter", "the shunting crew",
)
_LOADS = (
    "slate", "timber", "coal", "milk churns", "sacks of grain", "mail bags", "cement", "fence posts",
    "crates of lamp oil", "wool bales",
)
_ENGINES = ("engine number four", "the small tank engine", "the railcar", "the snow plough", "engine number nine",
            "the old saddle tank")
_FAULTS = ("a sticking regulator", "a leaking injector", "a cracked firebar", "a loose coupling",
           "a worn brake block", "a faulty gauge glass")

_TEMPLATES = (
    "The {hour} train left {station} {minutes} minutes late because of {fault}.",
    "{Staff} loaded {n} wagons of {load} at {station} before noon.",
    "{Engine} was taken out of service at {station} to repair {fault}.",
    "{Staff} reported that the gradient below {station} was slippery after the night's rain.",
    "A special working carried {load} from {station} to {station2} on the afternoon of the {day}th.",
    "The timetable for the winter months withdrew the last train from {station}.",
    "{Staff} spent the morning clearing drifted snow from the points at {station}.",
    "Takings at the booking office in {station} came to {n} shillings for the week.",
    "{Engine} worked the mixed train between {station} and {station2} all day without trouble.",
    "The diary records a delay of {minutes} minutes at {station} while {load} was unloaded.",
    "{Staff} replaced {n} sleepers on the curve beyond {station}.",
    "Fog lay so thick over {station} that the guard walked ahead of {engine} with a lamp.",
    "The water tank at {station} froze overnight and was thawed with braziers.",
    "A new telegraph wire was strung between {station} and {station2}.",
    "{Staff} noted that {engine} used {n} hundredweight of coal on the round trip.",
    "On the {day}th the line above {station} was closed for the inspector's visit.",
)


def _sentence(rng: random.Random) -> str:
    station, station2 = rng.sample(_STATIONS, 2)
    staff, engine = rng.choice(_STAFF), rng.choice(_ENGINES)
    return rng.choice(_TEMPLATES).format(
        hour=rng.choice(("early", "nine o'clock", "noon", "evening", "last")), station=station, station2=station2,
        minutes=rng.randint(3, 55), fault=rng.choice(_FAULTS), Staff=capitalize(staff), n=rng.randint(2, 40),
        load=rng.choice(_LOADS), Engine=capitalize(engine), engine=engine, day=rng.randint(4, 28),
    )


def diary_sentences(count: int, seed: int = 0) -> tuple[str, ...]:
    """The first `count` sentences of the railway diary (deterministic; a paragraph's last one ends a paragraph)."""
    return sentence_stream(_sentence, count, seed)
