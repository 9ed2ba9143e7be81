"""Retrieval-reasoning needles: retrieving the right fact is not enough, the answer takes one step over it.

Each probe inserts a fact (`needles.REASONING_NEEDLES`) at the probe's depth and a distractor of the same form
half the haystack away (`distractor_depth`), then asks a question whose answer follows from the fact in one step
(the building a room is in, what someone has after a trade, a season from a month, a country from a city). An
answer is correct when it states the answer and not the answer the distractor leads to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..default_model import DEFAULT_MODEL
from .judge import judge_reasoning
from .needle_task import NeedleTask, run_needle_task
from .needles import REASONING_NEEDLES
from .niah import TEMPLATE
from .report import EvalResult, mean, percent_of


def distractor_depth(depth: int) -> int:
    """Where the distractor goes: half the haystack away from the fact (50 -> 0, 100 -> 50, 0 -> 50)."""
    return depth - 50 if depth >= 50 else depth + 50


REASONING = NeedleTask(
    name="reasoning",
    version=1,
    template=TEMPLATE,
    items={needle.id: needle for needle in REASONING_NEEDLES},
    insertions=lambda needle, depth: [(depth, needle.fact), (distractor_depth(depth), needle.distractor)],
    judge=lambda needle, answer: {
        "correct": judge_reasoning(answer, needle.answers, needle.distractor_answers),
        "distracted": judge_reasoning(answer, needle.distractor_answers, needle.answers),
    },
    metrics={
        "accuracy_%": percent_of("correct"),
        "distracted_%": percent_of("distracted"),
        "kv_kept_%": percent_of("kept_fraction"),
        "s/prompt": lambda items: mean(item["seconds"] for item in items),
    },
)


def run_reasoning(
    model: str = DEFAULT_MODEL,
    methods: Sequence[str] | None = None,
    kv_sizes: Sequence[int] = (32, 64, 128, 256),
    lengths: Sequence[int] = (1000, 2000, 4000, 8000),
    depths: Sequence[int] = (0, 25, 50, 75, 100),
    needles: int = 3,
    out: str | Path | None = None,
    backend: str = "auto",
    max_new_tokens: int = 32,
    chat: bool = True,
    head_scores: Mapping[str, str] | None = None,
    progress: bool = True,
    merge: bool = False,
    question_window: bool = True,
) -> EvalResult:
    """Retrieval-reasoning accuracy of each method at each KV budget; arguments as `run_niah` (`needles`: how many
    of the reasoning needles each (length, depth) probes). Records also say whether the answer followed the
    distractor instead (`distracted`)."""
    return run_needle_task(
        REASONING, model=model, methods=methods, kv_sizes=kv_sizes, lengths=lengths, depths=depths,
        needles=needles, out=out, backend=backend, max_new_tokens=max_new_tokens, chat=chat,
        head_scores=head_scores, progress=progress, merge=merge, question_window=question_window,
    )
