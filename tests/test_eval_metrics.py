"""LongBench's metrics, ROUGE-1 and the needle judges on hand-made examples with known scores."""

import random

import pytest
import torch
from raggedkv.engine.eval.judge import judge_reasoning, judge_retrieval, mentions
from raggedkv.engine.eval.longbench import longbench_summary, score_prediction
from raggedkv.engine.eval.longbench_spec import TASKS
from raggedkv.engine.eval.metrics import (
    classification_score,
    code_sim_score,
    count_score,
    normalize_answer,
    qa_f1_score,
    retrieval_score,
    rouge1,
    rouge_l_score,
    score_example,
)


def test_normalize_answer_drops_case_punctuation_articles_and_spaces():
    assert normalize_answer("  The Cat, an  owl & A dog!") == "cat owl dog"


def test_qa_f1_known_values():
    # "cat sat on mat" vs "cat on mat": 3 shared tokens, precision 3/4, recall 1
    assert qa_f1_score("The cat sat on the mat.", "the cat on a mat") == pytest.approx(6 / 7)
    assert qa_f1_score("Paris", "paris") == 1.0
    assert qa_f1_score("London", "Paris") == 0.0
    assert qa_f1_score("", "Paris") == 0.0


def test_rouge_l_known_value():
    # LCS "the cat on the mat" = 5 of 6 tokens on both sides
    assert rouge_l_score("the cat sat on the mat", "The cat was on the mat.") == pytest.approx(5 / 6)
    assert rouge_l_score("", "anything") == 0.0


def test_rouge1_recall_and_f():
    recall, fmeasure = rouge1("a sandwich in the park", "eat a sandwich and sit in the park")
    assert recall == pytest.approx(5 / 8)
    assert fmeasure == pytest.approx(2 * (5 / 8) / (1 + 5 / 8))


def test_rouge1_recall_counts_reference_unigrams_with_multiplicity():
    assert rouge1("the cat sat", "The cat sat on the mat.")[0] == pytest.approx(3 / 6)
    assert rouge1("the cat", "the the cat")[0] == pytest.approx(2 / 3)
    assert rouge1("ripe MANGO a", "A mango, ripe!")[0] == 1.0
    assert rouge1("anything", "") == (0.0, 0.0) and rouge1("", "anything") == (0.0, 0.0)


def test_rouge1_gives_the_rouge_score_packages_numbers():
    scorer = pytest.importorskip("rouge_score.rouge_scorer").RougeScorer(["rouge1"], use_stemmer=False)
    rng = random.Random(torch.initial_seed())  # the conftest's per-test seed
    words = ["Cat", "cat,", "the", "a", "mat", "4817", "x-ray", "naïve", "", "!", "Ridge."]
    for _ in range(200):
        prediction, reference = (" ".join(rng.choices(words, k=rng.randint(0, 8))) for _ in range(2))
        expected = scorer.score(reference, prediction)["rouge1"]
        assert rouge1(prediction, reference) == pytest.approx((expected.recall, expected.fmeasure))


def test_qa_f1_follows_longbench_normalisation():
    # articles and punctuation are dropped: "a slice of ripe mango" -> slice of ripe mango
    assert qa_f1_score("The slice of ripe mango!", "a slice of ripe mango") == 1.0
    assert qa_f1_score("ripe mango", "slice of ripe mango") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert qa_f1_score("bicycle", "mango") == 0.0


def test_classification_score():
    classes = ["Human", "Entity", "Other location", "location"]
    assert classification_score("Human being", "Human", all_classes=classes) == 1.0
    assert classification_score("Entity or Human", "Human", all_classes=classes) == 0.5
    assert classification_score("no idea", "Human", all_classes=classes) == 0.0
    # "location" is a strict substring of the ground truth, so it does not count as a second match
    assert classification_score("Other location", "Other location", all_classes=classes) == 1.0


def test_retrieval_and_count_scores():
    assert retrieval_score("Paragraph 3", "Paragraph 3") == 1.0
    assert retrieval_score("Paragraph 3 or Paragraph 12", "Paragraph 12") == 0.5
    assert retrieval_score("I cannot tell", "Paragraph 12") == 0.0
    assert count_score("There are 7 unique paragraphs out of 10", 7) == 0.5
    assert count_score("seven", 7) == 0.0


def test_code_sim_uses_first_non_comment_line():
    assert code_sim_score("\n# the next line\nreturn x + 1\nfoo()", "return x + 1") == 1.0
    # indel similarity: 2 * 8 common / (8 + 12) characters
    assert code_sim_score("return x", "return x + 1") == pytest.approx(0.8)
    assert code_sim_score("// only comments", "return x") == 0.0


def test_score_example_takes_best_ground_truth():
    assert score_example("qa_f1", "Paris", ["London", "Paris, France"]) == pytest.approx(2 / 3)
    assert score_example("qa_f1", "Paris", []) == 0.0


def test_few_shot_datasets_score_the_first_line_only():
    example = {"answers": ["Paris"], "all_classes": None}
    assert score_prediction(TASKS["triviaqa"], "\nParis\nLondon London", example) == 1.0
    assert score_prediction(TASKS["hotpotqa"], "Paris\nLondon", example) == pytest.approx(2 / 3)


def test_longbench_summary_averages_datasets_not_examples():
    records = [
        {"method": "snapkv", "kv_size": 64, "dataset": "a", "score": 1.0, "kept_fraction": 0.1},
        {"method": "snapkv", "kv_size": 64, "dataset": "a", "score": 0.0, "kept_fraction": 0.1},
        {"method": "snapkv", "kv_size": 64, "dataset": "b", "score": 1.0, "kept_fraction": 0.3},
    ]
    columns, rows = longbench_summary(records, ["a", "b"])
    assert columns == ["method", "kv_size", "a", "b", "average", "kv_kept_%"]
    assert rows == [["snapkv", 64, 50.0, 100.0, 75.0, pytest.approx(100 * 0.5 / 3)]]


def test_judges_match_whole_words():
    assert mentions("It was number 4817.", ["4817"])
    assert not mentions("number 48170", ["4817"])
    assert judge_retrieval("The ingredient is Candied ginger!", ["candied ginger"])
    assert judge_reasoning("Hollis.", ["hollis"], ["quenby"])
    assert not judge_reasoning("Hollis or Quenby", ["hollis"], ["quenby"])
    assert not judge_reasoning("I don't know", ["hollis"], ["quenby"])


def test_retained_vs_full_counts_only_the_probes_full_answers():
    from raggedkv.engine.eval.report import retained_vs_full, summary_rows

    def record(method, kv_size, probe, correct):
        return {"method": method, "kv_size": kv_size, "probe": probe, "correct": correct}

    records = [record("full", None, p, p != "c") for p in "abc"]  # full solves a and b
    records += [record("snapkv", 64, "a", True), record("snapkv", 64, "b", False), record("snapkv", 64, "c", True)]
    records += [record("pyramidkv", 64, "c", True)]  # shares no solved probe
    retained = retained_vs_full(records, ["probe"])
    columns, rows = summary_rows(records, {"retained_%": retained})
    assert columns == ["method", "kv_size", "n", "retained_%"]
    assert rows[0][3] == 100.0 and rows[1][3] == 50.0  # c, solved by snapkv alone, does not count
    assert rows[2][3] is None
    assert retained_vs_full([r for r in records if r["method"] != "full"], ["probe"]) is None
