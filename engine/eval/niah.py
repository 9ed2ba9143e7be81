"""Needle in a haystack: does the model, with a compressed KV cache, still retrieve one inserted fact?

Each probe inserts one of the evaluation's needles (`needles.NEEDLES`) into the project's own haystack at a
depth, fits the prompt to a length in tokens, and asks the needle's question. An answer is correct when it states
the needle's key fact; ROUGE-1 recall and F-measure against the needle sentence are recorded as the published
runners report them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..default_model import DEFAULT_MODEL
from .judge import judge_retrieval
from .metrics import rouge1
from .needle_task import NeedleTask, run_needle_task
from .needles import NEEDLES, Needle
from .report import EvalResult, mean, percent_of

TEMPLATE = (
    "Below is a long logbook. One sentence somewhere in it answers the question that follows.\n\n"
    "<logbook>\n{context}\n</logbook>\n\n"
    "Using only the logbook, answer the question in one short sentence.\n"
    "Question: {question}\nAnswer:"
)


def _judge(needle: Needle, answer: str) -> dict:
    recall, fmeasure = rouge1(answer, needle.sentence)
    return {"correct": judge_retrieval(answer, needle.answers), "rouge1_recall": recall, "rouge1_f": fmeasure}


NIAH = NeedleTask(
    name="niah",
    version=1,
    template=TEMPLATE,
    items={needle.id: needle for needle in NEEDLES},
    insertions=lambda needle, depth: [(depth, needle.sentence)],
    judge=_judge,
    metrics={
        "accuracy_%": percent_of("correct"),
        "rouge1_recall_%": percent_of("rouge1_recall"),
        "kv_kept_%": percent_of("kept_fraction"),
        "s/prompt": lambda items: mean(item["seconds"] for item in items),
    },
)


def run_niah(
    model: str = DEFAULT_MODEL,
    methods: Sequence[str] | None = None,
    kv_sizes: Sequence[int] = (32, 64, 128, 256),
    lengths: Sequence[int] = (1000, 2000, 4000, 8000),
    depths: Sequence[int] = (0, 25, 50, 75, 100),
    needles: int = 1,
    out: str | Path | None = None,
    backend: str = "auto",
    max_new_tokens: int = 32,
    chat: bool = True,
    head_scores: Mapping[str, str] | None = None,
    progress: bool = True,
    merge: bool = False,
    question_window: bool = True,
) -> EvalResult:
    """Needle-in-a-haystack accuracy of each method at each KV budget.

    Args:
        model: model name or local Hugging Face folder.
        methods: compression methods (default: all the engine has; `full` runs once, whatever the budget).
        kv_sizes: average tokens kept per head per layer.
        lengths: prompt lengths in tokens, chat template included (each prompt is within a sentence of it).
        depths: needle depths in percent of the haystack (0 = first sentence, 100 = last).
        needles: how many of the needles each (length, depth) probes.
        out: results JSON, rewritten (atomically) after every answered prompt. If it exists with the same
            settings and grid the run resumes (cells already there are skipped); a file that does not parse, of
            other settings, or (without `merge`) over another grid is refused before any work and left untouched.
            Heatmaps are written next to it as `<out stem>-<method>.png`, and `<out stem>-accuracy.png`. None
            writes nothing.
        backend: the engine's backend.
        max_new_tokens: answer length.
        chat: put each prompt in the model's chat template as a user turn (when the model has one).
        head_scores: head-score file per method (headkv-r, headkv-r2, compresskv); default: the engine's.
        progress: show a progress bar.
        merge: add this run's cells to an `out` over another grid (same settings); the table, summary and plots
            then cover the whole file.
        question_window: chat prompts score with the window before the template's assistant header and keep the
            header in every head (`Engine.generate`'s default); False: the last prompt tokens score. Recorded in
            the results' settings.

    Returns:
        The records of the grid (with `merge`, of the whole file), the summary (one row per method and kv_size)
        and the files written.
    """
    return run_needle_task(
        NIAH, model=model, methods=methods, kv_sizes=kv_sizes, lengths=lengths, depths=depths, needles=needles,
        out=out, backend=backend, max_new_tokens=max_new_tokens, chat=chat, head_scores=head_scores,
        progress=progress, merge=merge, question_window=question_window,
    )
