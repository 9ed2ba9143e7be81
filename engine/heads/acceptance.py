"""Which trials count: the published answer checks and thresholds (METHODS.md 1(a), 4.1).

* retrieval and semantic: ROUGE-1 recall of the answer in the response, x100, must exceed 50;
* reasoning: LongBench's `qa_f1_score(response, answer)`, x100, must exceed 50.

Both metrics are the evaluation's (`eval/metrics.py`): ROUGE-1 with the `rouge-score` package's tokenisation
(lower-case, runs of `[a-z0-9]`) without stemming; the F1 as LongBench computes it (lower-case, punctuation and the
articles a/an/the removed, whitespace split).
"""

from __future__ import annotations

from ..eval.metrics import qa_f1_score, rouge1

THRESHOLD = 50.0


def answer_metric(kind: str, response: str, answer: str) -> float:
    """The kind's answer check, x100 (the scale the threshold is published on)."""
    if kind == "reasoning":
        return 100 * qa_f1_score(response, answer)
    recall, _ = rouge1(response, answer)
    return 100 * recall


def accepted(metric: float) -> bool:
    """A trial counts when its answer metric strictly exceeds the published threshold of 50."""
    return metric > THRESHOLD
