"""Which trials count: the published answer checks and thresholds (METHODS.md 1(a), 4.1).

* retrieval and semantic: ROUGE-1 recall of the answer in the response, x100, must exceed 50;
* reasoning: LongBench's `qa_f1_score(response, answer)`, x100, must exceed 50.

ROUGE-1 recall follows the `rouge-score` package's tokenisation (lower-case, runs of `[a-z0-9]`) without
stemming; the F1 follows LongBench (lower-case, punctuation and the articles a/an/the removed, whitespace split).
"""

from __future__ import annotations

import re
import string
from collections import Counter

THRESHOLD = 50.0


def _rouge_tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def rouge1_recall(reference: str, response: str) -> float:
    """The fraction of the reference's unigrams (with multiplicity) that the response contains, in [0, 1]."""
    ref = Counter(_rouge_tokens(reference))
    if not ref:
        return 0.0
    overlap = sum((ref & Counter(_rouge_tokens(response))).values())
    return overlap / sum(ref.values())


def _normalize_answer(text: str) -> list[str]:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def qa_f1(response: str, answer: str) -> float:
    """LongBench's token F1 between the response and the answer, in [0, 1]."""
    predicted, truth = _normalize_answer(response), _normalize_answer(answer)
    common = sum((Counter(predicted) & Counter(truth)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(truth)
    return 2 * precision * recall / (precision + recall)


def answer_metric(kind: str, response: str, answer: str) -> float:
    """The kind's answer check, x100 (the scale the threshold is published on)."""
    if kind == "reasoning":
        return 100 * qa_f1(response, answer)
    return 100 * rouge1_recall(answer, response)


def accepted(metric: float) -> bool:
    """A trial counts when its answer metric strictly exceeds the published threshold of 50."""
    return metric > THRESHOLD
