"""The head-scoring haystack: original filler prose, generated deterministically from templates and word lists.

The text is an invented chronicle of an inland market town (guilds, fairs, roads, harvests, council business),
written for this project: the published detection haystacks are not licensed for redistribution. A fixed seed
makes every run on every machine see the same sentences, and a longer context extends a shorter one. The topic is
disjoint from the needles (`needles.py`) and from the evaluation haystack (`engine/eval`), so an answer can only
come from the inserted needle.
"""

from __future__ import annotations

import random

from ..filler import capitalize, sentence_stream

HAYSTACK_SEED = 1871
HAYSTACK_VERSION = 1  # bump when the text changes: the sidecar records it, so old runs are not mixed in

_TOWN_PLACES = (
    "the corn exchange", "the old tannery", "the guildhall", "the east gate", "the mill race", "the wool market",
    "the chapel of Saint Orrin", "the toll bridge", "the cooper's yard", "the almshouses", "the town well",
    "the north road", "the brewery lane", "the cattle pens", "the clock tower", "the ropewalk", "the dye works",
    "the grammar school", "the parish barn", "the weighhouse",
)
_PEOPLE = (
    "the town clerk", "the master weaver", "the reeve", "a travelling tinker", "the schoolmaster",
    "the widow of the saddler", "two apprentices", "the bell-ringer", "the carters' guild", "the magistrate",
    "a pedlar from the coast", "the miller's eldest son", "the aldermen", "the night watch", "the tax assessor",
)
_GOODS = (
    "barley", "tallow candles", "woollen cloth", "salted pork", "iron nails", "cider", "oak barrels", "leather",
    "beeswax", "slate tiles", "linseed oil", "oat flour", "copper pans", "hemp rope",
)
_SEASONS = (
    "In the spring of that year", "During the autumn fair", "Towards the end of winter", "At Michaelmas",
    "In the dry summer", "Early in the new year", "After the harvest", "In the week before Lent",
    "Throughout the wet season", "On the first market day of the month",
)
_DECISIONS = (
    "raise the toll on carts", "repair the paving", "hire a second watchman", "forbid pigs in the streets",
    "rebuild the pump", "widen the lane", "fine the late traders", "plant a row of limes",
    "move the horse fair", "mend the church roof",
)
_QUALITIES = ("poor", "fair", "plentiful", "middling", "disappointing", "generous")
_AMOUNTS = ("twice", "half", "a third", "nearly double", "a quarter")

_TEMPLATES = (
    "{season}, {person} complained that the price of {goods} had risen again.",
    "The council met at {place} and voted to {decision}.",
    "{Person} kept a ledger of every cart that passed {place}.",
    "Records from {place} show that {n} barrels of {goods} were sold in a single day.",
    "{season}, the harvest was {quality}, and the granary near {place} stood half empty.",
    "A dispute between {person} and {person2} over {goods} was settled at {place}.",
    "The road from {place} to {place2} was so rutted that carts often lost a wheel.",
    "{Person} was paid {small} shillings to {decision}.",
    "Traders from the hills brought {goods} and {goods2} to {place} every week.",
    "{season}, a fire broke out near {place} but was put out before it spread.",
    "Nobody remembers why {place} was built so far from {place2}.",
    "The accounts for that quarter list {goods} worth {amount} the usual sum.",
    "{Person} argued for years that the town should {decision}.",
    "Children were sent to {place} to fetch water whenever the well ran low.",
    "{season}, {person} opened a small shop selling {goods} beside {place}.",
    "A new bell was hung in {place}, paid for by the sale of {goods}.",
    "The minutes record that {person} spoke for an hour about {goods}.",
    "Every market day, {person} stood at {place} reading out the prices of {goods}.",
    "The clerk noted that the stock of {goods} at {place} would last {small} more weeks.",
    "{season}, the river rose and flooded the cellars near {place}.",
)


def _sentence(rng: random.Random) -> str:
    place, place2 = rng.sample(_TOWN_PLACES, 2)
    person, person2 = rng.sample(_PEOPLE, 2)
    goods, goods2 = rng.sample(_GOODS, 2)
    return rng.choice(_TEMPLATES).format(
        season=rng.choice(_SEASONS), place=place, place2=place2, person=person, Person=capitalize(person),
        person2=person2, goods=goods, goods2=goods2, decision=rng.choice(_DECISIONS),
        quality=rng.choice(_QUALITIES), amount=rng.choice(_AMOUNTS), n=rng.randint(3, 90), small=rng.randint(2, 12),
    )


def haystack_sentences(count: int, seed: int = HAYSTACK_SEED) -> tuple[str, ...]:
    """The first `count` sentences of the filler (a paragraph's last sentence ends with a blank line).

    The same `seed` always gives the same text, and a shorter request is a prefix of a longer one.
    """
    return sentence_stream(_sentence, count, seed)
