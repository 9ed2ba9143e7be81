"""The project's answer metrics: LongBench's official metrics, restated, and ROUGE-1 as the NIAH runners and the
head-scoring acceptance checks (`heads/acceptance.py`) use it.

Every metric takes one prediction and one ground truth and returns a float in [0, 1]; `score_example` takes the
maximum over an example's ground truths, as LongBench's `eval.py` does. ROUGE-L comes from the maintained
`rouge-score` package (the official code uses the older `rouge` package; both report the F-measure of the
longest common subsequence over lower-cased word tokens); ROUGE-1 is computed here with that package's
tokenisation (lower case, runs of `[a-z0-9]`, no stemming) and gives its numbers, so head scoring needs no optional
dependency; code similarity comes from `rapidfuzz`, a maintained equivalent of the `fuzzywuzzy` ratio the official
code calls.
"""

from __future__ import annotations

import importlib
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache

_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """LongBench / SQuAD normalisation: lower case, drop punctuation, drop articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: Sequence[str], ground_truth: Sequence[str]) -> float:
    """F1 of the multiset overlap of two token lists (0 when they share no token)."""
    same = sum((Counter(prediction) & Counter(ground_truth)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction), same / len(ground_truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **_: object) -> float:
    """Token F1 after `normalize_answer` (narrativeqa, qasper, multifieldqa_en, hotpotqa, 2wikimqa, musique,
    triviaqa)."""
    return token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def _require(module: str, package: str):
    """Import an optional dependency of the evaluations, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"{err.name} is missing: pip install {package} (or raggedkv[eval])") from err


@cache
def _rouge_l_scorer():
    return _require("rouge_score.rouge_scorer", "rouge-score").RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l_score(prediction: str, ground_truth: str, **_: object) -> float:
    """ROUGE-L F-measure (gov_report, qmsum, multi_news, samsum); 0 for an empty prediction or reference."""
    return _rouge_l_scorer().score(ground_truth, prediction)["rougeL"].fmeasure


def rouge_tokens(text: str) -> list[str]:
    """`rouge-score`'s tokens without stemming: the runs of `[a-z0-9]` in the lower-cased text."""
    return re.findall(r"[a-z0-9]+", text.lower())


def rouge1(prediction: str, reference: str) -> tuple[float, float]:
    """ROUGE-1 (recall, F-measure) of `prediction` against `reference`, as `rouge-score` gives them: unigram
    overlap with multiplicity over the reference's (recall) and the prediction's (precision) unigram counts; 0 for
    an empty side."""
    predicted, expected = Counter(rouge_tokens(prediction)), Counter(rouge_tokens(reference))
    overlap = sum((predicted & expected).values())
    precision = overlap / max(sum(predicted.values()), 1)
    recall = overlap / max(sum(expected.values()), 1)
    fmeasure = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return recall, fmeasure


def classification_score(prediction: str, ground_truth: str, *, all_classes: Sequence[str], **_: object) -> float:
    """trec: the class names found in the prediction, minus those that are a strict substring of the ground
    truth; 1/len(matches) if the ground truth is among them, else 0.

    The official code has a difflib fallback for predictions that name no class, but its guard
    (`list != 0`) is always true, so the fallback never runs: a prediction that names no class scores 0, as here.
    """
    matches = [name for name in all_classes if name in prediction]
    matches = [name for name in matches if not (name in ground_truth and name != ground_truth)]
    return 1.0 / len(matches) if ground_truth in matches else 0.0


def _fraction_equal(numbers: list[str], target: str) -> float:
    return 0.0 if not numbers else sum(number == target for number in numbers) / len(numbers)


def retrieval_score(prediction: str, ground_truth: str, **_: object) -> float:
    """passage_retrieval_en: the fraction of the numbers in the prediction that equal N in "Paragraph N"."""
    target = re.findall(r"Paragraph (\d+)", ground_truth)[0]
    return _fraction_equal(re.findall(r"\d+", prediction), target)


def count_score(prediction: str, ground_truth: str, **_: object) -> float:
    """passage_count: the fraction of the numbers in the prediction that equal the ground truth."""
    return _fraction_equal(re.findall(r"\d+", prediction), str(ground_truth))


def code_sim_score(prediction: str, ground_truth: str, **_: object) -> float:
    """lcc, repobench-p: fuzzy ratio / 100 between the ground truth and the prediction's first line that holds
    no backtick, `#` or `//` (empty when there is none)."""
    fuzz = _require("rapidfuzz.fuzz", "rapidfuzz")
    lines = prediction.lstrip("\n").split("\n")
    first = next((line for line in lines if "`" not in line and "#" not in line and "//" not in line), "")
    if not first or not ground_truth:  # fuzzywuzzy scores an empty string 0 (rapidfuzz would give 100 for two)
        return 0.0
    return round(fuzz.ratio(first, ground_truth)) / 100


METRICS: dict[str, Callable[..., float]] = {
    "qa_f1": qa_f1_score,
    "rouge_l": rouge_l_score,
    "classification": classification_score,
    "retrieval": retrieval_score,
    "count": count_score,
    "code_sim": code_sim_score,
}


def score_example(metric: str, prediction: str, answers: Sequence[str], all_classes: Sequence[str] = ()) -> float:
    """The best score of `prediction` over the example's ground truths under the named metric."""
    fn = METRICS[metric]
    return max((fn(prediction, answer, all_classes=all_classes) for answer in answers), default=0.0)
