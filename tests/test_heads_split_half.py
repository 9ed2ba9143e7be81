"""`split_half_agreement`: how much the head scores depend on which needles were asked."""

import numpy as np
import pytest
from raggedkv.engine.heads.output import split_half_agreement


def random_lists(rng: np.random.Generator, heads: int, needles: list[int]) -> dict[str, list[float]]:
    return {f"0-{h}": rng.random(len(needles)).tolist() for h in range(heads)}


def test_the_halves_are_the_even_and_odd_needles_and_match_a_numpy_reference():
    rng = np.random.default_rng()
    needles = [int(n) for n in rng.integers(0, 5, size=40)]
    needles[:5] = range(5)  # every needle present
    lists = random_lists(rng, 20, needles)
    out = split_half_agreement(lists, needles, top_fraction=0.2)
    scores = np.array(list(lists.values()))
    first = np.isin(needles, [0, 2, 4])
    a, b = scores[:, first].mean(1), scores[:, ~first].mean(1)
    assert out["split"] == "needles 0, 2, 4 | 1, 3"
    assert out["trials"] == [int(first.sum()), int((~first).sum())]
    assert out["pearson"] == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-4)
    top_a, top_b = set(np.argsort(-a, kind="stable")[:4]), set(np.argsort(-b, kind="stable")[:4])
    assert out["top_heads_shared"] == [len(top_a & top_b), 4]


def test_scores_that_do_not_depend_on_the_needle_agree_fully():
    rng = np.random.default_rng()
    per_head = rng.random(30)
    needles = [0, 1, 2, 3] * 3
    lists = {f"1-{h}": [float(v)] * len(needles) for h, v in enumerate(per_head)}
    out = split_half_agreement(lists, needles)
    assert out["pearson"] == pytest.approx(1.0)
    assert out["top_heads_shared"] == [3, 3]


def test_opposite_halves_correlate_negatively():
    needles = [0, 1]
    lists = {"0-0": [1.0, 0.0], "0-1": [0.0, 1.0], "0-2": [0.5, 0.5]}
    out = split_half_agreement(lists, needles, top_fraction=0.34)
    assert out["pearson"] == pytest.approx(-1.0)
    assert out["top_heads_shared"] == [0, 1]


def test_no_split_from_one_needle_and_no_correlation_from_a_flat_half():
    assert split_half_agreement({"0-0": [1.0, 2.0]}, [3, 3]) is None
    flat = split_half_agreement({"0-0": [1.0, 0.5], "0-1": [1.0, 0.25]}, [0, 1])
    assert flat["pearson"] is None and flat["trials"] == [1, 1]


def test_needles_must_match_the_score_lists():
    with pytest.raises(ValueError, match=r"needles holds 1 needle indices, but the score lists hold 2 scores"):
        split_half_agreement({"0-0": [1.0, 2.0]}, [0])
