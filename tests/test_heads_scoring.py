"""Head scoring: the three per-step rules on hand-made attention traces, answer span location, acceptance."""

import pytest
import torch
from raggedkv.engine.eval.metrics import qa_f1_score
from raggedkv.engine.heads.acceptance import accepted, answer_metric
from raggedkv.engine.heads.prompt import locate_span
from raggedkv.engine.heads.scoring import STEP_RULES, reasoning_step, retrieval_step, semantic_step

# prompt positions 0..7, answer span [3, 6) holding tokens 30 31 30; the cache has two more (generated) positions
PROMPT = torch.tensor([10, 11, 12, 30, 31, 30, 13, 14])
SPAN = (3, 6)
CONTEXT = 10


def trace(rows: dict[tuple[int, int], dict[int, float]]) -> torch.Tensor:
    """`[2 layers, 2 heads, CONTEXT]` attention: each listed head's row puts the given mass on the given positions
    and spreads the rest evenly over the others."""
    attention = torch.full((2, 2, CONTEXT), 1.0 / CONTEXT)
    for (layer, head), mass in rows.items():
        rest = (1 - sum(mass.values())) / (CONTEXT - len(mass))
        row = torch.full((CONTEXT,), rest)
        for position, value in mass.items():
            row[position] = value
        attention[layer, head] = row
    return attention


def test_retrieval_scores_top1_copies_inside_the_span():
    attention = trace({
        (0, 0): {4: 0.6},          # top-1 in the span and holds the generated token 31: scores
        (0, 1): {3: 0.6},          # top-1 in the span but holds 30, not 31: no score
        (1, 0): {1: 0.6, 4: 0.3},  # top-1 outside the span: no score, however much mass the span gets
        (1, 1): {9: 0.6},          # top-1 on a generated token, outside the prompt: no score
    })
    got = retrieval_step(attention, 31, PROMPT, SPAN)
    assert got.dtype == torch.float64
    assert torch.equal(got, torch.tensor([[1 / 3, 0.0], [0.0, 0.0]], dtype=torch.float64))


def test_retrieval_counts_a_repeated_answer_token_once_per_step():
    attention = trace({(0, 0): {5: 0.5}})
    assert retrieval_step(attention, 30, PROMPT, SPAN)[0, 0] == pytest.approx(1 / 3)


def test_reasoning_sums_attention_on_the_top_k_positions_inside_the_span():
    # k = |span| = 3: head (0, 0)'s top-3 are positions 3 (0.4), 1 (0.3) and 5 (0.2); two of them lie in the span
    attention = trace({(0, 0): {3: 0.4, 1: 0.3, 5: 0.2, 4: 0.01}, (1, 1): {0: 0.5, 1: 0.2, 2: 0.2}})
    got = reasoning_step(attention, token=999, prompt_ids=PROMPT, span=SPAN)  # no token-identity check
    assert got[0, 0] == pytest.approx((0.4 + 0.2) / 3)
    assert got[1, 1] == 0.0  # its top-3 all lie before the span


def test_semantic_adds_the_span_mass_once_per_matching_span_token():
    attention = trace({(0, 0): {3: 0.2, 4: 0.2, 5: 0.1}})
    mass = attention[..., 3:6].double().sum(-1)
    assert torch.allclose(semantic_step(attention, 30, PROMPT, SPAN), 2 * mass)  # 30 appears twice in the span
    assert torch.allclose(semantic_step(attention, 31, PROMPT, SPAN), mass)
    assert torch.equal(semantic_step(attention, 12, PROMPT, SPAN), torch.zeros(2, 2, dtype=torch.float64))


def test_step_rules_are_summed_over_steps_like_a_trial():
    attention = trace({(0, 0): {3: 0.9}})
    total = sum(retrieval_step(attention, token, PROMPT, SPAN) for token in (30, 31, 30))
    assert total[0, 0] == pytest.approx(2 / 3)  # two of the three steps copy the top-1 token


@pytest.mark.parametrize("rule", sorted(STEP_RULES))
@pytest.mark.parametrize("attention, span, match", [
    (torch.rand(2, CONTEXT), SPAN, "layers, heads, context"),
    (torch.rand(2, 2, CONTEXT), (5, 5), "span"),
    (torch.rand(2, 2, CONTEXT), (6, 9), "span"),
    (torch.rand(2, 2, 4), SPAN, "fewer than the prompt"),
])
def test_step_rules_reject_bad_shapes(rule, attention, span, match):
    with pytest.raises(ValueError, match=match):
        STEP_RULES[rule](attention, 30, PROMPT, span)


def test_locate_span_exact_first_occurrence():
    assert locate_span([1, 2, 3, 4, 2, 3, 4], [2, 3, 4]) == (1, 4)
    assert locate_span([7, 8, 9], [7, 8, 9]) == (0, 3)


def test_locate_span_tolerates_an_edge_token_that_tokenised_differently():
    answer = list(range(100, 120))  # 20 tokens; in the prompt the first one merged differently
    prompt = [1, 2, 3, 999, *answer[1:], 4, 5]
    assert locate_span(prompt, answer) == (3, 23)


def test_locate_span_tries_each_tokenisation_of_the_answer():
    with_space, bare = [220, 84, 104], [84, 104]  # " Th" and "Th" in a byte-level vocabulary
    assert locate_span([84, 104, 101, 220, 84], with_space, bare) == (0, 2)  # the needle opens the context
    assert locate_span([1, 220, 84, 104, 84, 104], with_space, bare) == (1, 4)  # the spaced form wins


def test_locate_span_rejects_missing_answers():
    with pytest.raises(ValueError, match="not in the prompt"):
        locate_span([1, 2, 3, 4, 5], [1, 9, 3])
    with pytest.raises(ValueError, match="no tokens"):
        locate_span([1, 2, 3], [])
    with pytest.raises(ValueError, match="no tokens"):
        locate_span([1, 2, 3])
    with pytest.raises(ValueError, match="not in the prompt"):
        locate_span([1, 2], [1, 2, 3])


def test_acceptance_thresholds_are_strict_and_per_kind():
    answer = "Priya's weekend plan is to hike up Cedar Ridge."
    assert not accepted(50.0) and accepted(50.01)
    half = "Priya's weekend plan is"  # 5 of the answer's 10 rouge tokens: exactly 50, not accepted
    assert answer_metric("retrieval", half, answer) == 50.0
    assert not accepted(answer_metric("retrieval", half, answer))
    assert accepted(answer_metric("retrieval", half + " to hike", answer))
    assert answer_metric("semantic", half, answer) == answer_metric("retrieval", half, answer)
    assert answer_metric("reasoning", half, answer) == pytest.approx(100 * qa_f1_score(half, answer))
    distractor = "Tomas's weekend plan is to repair his old bicycle."
    assert not accepted(answer_metric("reasoning", distractor, answer))
    assert accepted(answer_metric("reasoning", answer.lower(), answer))
