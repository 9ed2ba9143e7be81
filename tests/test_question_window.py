"""The question-aware window: a prompt's chat-template assistant header is found from token ids; with it, the window
just before the header scores the keys before it, every head keeps the header and the window, and totals stay
`kv_size * L * H`; without it nothing changes; both backends agree."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raggedkv.engine import Engine
from raggedkv.engine.backend import get_backend
from raggedkv.engine.chat_header import assistant_header_ids, encode_user_turn, trailing_header
from raggedkv.engine.compress import prefix_scores
from raggedkv.engine.default_model import models_dir
from raggedkv.engine.methods import Scoring
from tests.engine_helpers import char_tokenizer, random_prompts, tiny_model
from tests.test_engine_methods import tiny_score_files
from tests.test_engine_snapkv import _kept_positions, _post_rope_qk

# "(" content ")" then the generation prompt "A:": the header is ")A:", 3 tokens of the character tokenizer
TEMPLATE = ("{% for m in messages %}({{ m['content'] }}){% endfor %}"
            "{% if add_generation_prompt %}A:{% endif %}")
REWRITING_TEMPLATE = "{% for m in messages %}({{ m['content'] | upper }}){% endfor %}A:"
WINDOW, HEADER, KV_SIZE = 8, 3, 20
METHODS = ("snapkv", "ada-snapkv", "pyramidkv", "streamingllm", "headkv-r2", "compresskv")
SMOLLM2 = models_dir() / "smollm2-135m-instruct"


def chat_tokenizer(template: str = TEMPLATE):
    tokenizer = char_tokenizer()
    tokenizer.chat_template = template
    return tokenizer


def test_header_of_a_tiny_chat_template():
    tokenizer = chat_tokenizer()
    ids, header = encode_user_turn(tokenizer, "where is it?")
    assert header == HEADER
    assert tokenizer.decode(ids[-header:]) == ")A:"
    assert tokenizer.decode(ids[:-header]) == "(where is it?"


def test_a_template_that_rewrites_the_content_has_no_header():
    ids, header = encode_user_turn(chat_tokenizer(REWRITING_TEMPLATE), "where is it?")
    assert header == 0 and len(ids) == len("(WHERE IS IT?)A:")


def test_the_header_is_found_at_the_end_of_token_ids():
    tokenizer = chat_tokenizer()
    header_ids = assistant_header_ids(tokenizer)
    assert tokenizer.decode(header_ids) == ")A:"
    assert assistant_header_ids(char_tokenizer()) == []  # no chat template
    assert assistant_header_ids(chat_tokenizer(REWRITING_TEMPLATE)) == []
    ids, header = encode_user_turn(tokenizer, "is it there?")
    assert trailing_header(ids, header_ids) == header == HEADER
    assert trailing_header(ids[:-1], header_ids) == 0  # the header cut short
    assert trailing_header(header_ids, header_ids) == 0  # no user token before it
    assert trailing_header(ids, []) == 0


@pytest.mark.skipif(not (SMOLLM2 / "tokenizer_config.json").is_file(), reason="SmolLM2 not converted locally")
def test_header_of_smollm2():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2)
    ids, header = encode_user_turn(tokenizer, "What is the secret? Answer:")
    assert tokenizer.decode(ids[-header:]) == "<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(ids[-header - 2 : -header]) == " Answer:"


def _scores_by_hand(scoring: Scoring, q, k, window: int, header: int, scale: float, weights) -> torch.Tensor:
    """fp64 scores of keys `[0, n - header - window)` by the `window` queries just before the last `header`."""
    q, k = q.double(), k.double()
    n, group = k.shape[1], q.shape[0] // k.shape[0]
    end = n - header
    if scoring.kind == "recency":
        positions = torch.arange(end - window, dtype=torch.float64)
        return positions.masked_fill(positions < scoring.sinks, float("inf")).expand(k.shape[0], -1)
    logits = q[:, end - window : end] @ k[:, :end].repeat_interleave(group, 0).transpose(1, 2) * scale
    future = torch.arange(end)[None, :] > torch.arange(end - window, end)[:, None]
    attention = logits.masked_fill(future, float("-inf")).softmax(-1)[:, :, : end - window]
    votes = attention.sum(1) if scoring.window_reduce == "sum" else attention.mean(1)
    if weights is not None:
        votes = votes * weights.double()[:, None]
    grouped = votes.view(k.shape[0], group, -1)
    votes = {"mean": grouped.mean(1), "max": grouped.amax(1), "sum": grouped.sum(1)}[scoring.group_reduce]
    pool = F.max_pool1d if scoring.pool == "max" else F.avg_pool1d
    return pool(votes[:, None], scoring.pool_size, stride=1, padding=scoring.pool_size // 2)[:, 0]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("scoring", [
    Scoring(window=WINDOW, window_reduce="sum", group_reduce="mean", pool="max", pool_size=7),
    Scoring(window=4, window_reduce="mean", group_reduce="max", pool="avg", pool_size=5),
    Scoring(kind="recency", window=1, sinks=4, pool_size=1),
], ids=["snapkv", "mean-max-avg", "recency"])
@pytest.mark.parametrize("header", [0, HEADER])
def test_scores_with_a_header_equal_the_definition(backend, scoring, header):
    q, k = torch.randn(6, 37, 16), torch.randn(2, 37, 16)
    weights = torch.rand(6) + 0.5 if scoring.kind == "window" else None
    scores = prefix_scores(get_backend(backend, torch.device("cpu")), scoring, q, k, scoring.window, 0.25, weights,
                           header)
    expected = _scores_by_hand(scoring, q, k, scoring.window, header, 0.25, weights)
    assert scores.shape == (2, 37 - header - scoring.window)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-6)


def _engine(method: str, tmp_path, backend: str = "torch") -> Engine:
    model = tiny_model(layers=3, heads=4, kv_heads=2, seed=5)
    params = tiny_score_files(tmp_path, layers=3, heads=4).get(method, {})
    return Engine.from_model(model, chat_tokenizer(), method=method, backend=backend, **params)


def _kept_sets(engine: Engine, state, ids: list[int]) -> list[list[list[int]]]:
    """Positions each (layer, KV head) of sequence 0 holds, read back from the cache by matching post-RoPE keys."""
    heads = engine.shape.num_kv_heads
    kept = []
    for layer, (_, k) in enumerate(_post_rope_qk(engine.model, ids)):
        cache = state.cache.layer(layer)
        rows = [(int(cache.kv_indptr[h]), int(cache.kv_lens[h])) for h in range(heads)]
        kept.append([sorted(_kept_positions(cache.k_cache[s : s + n], k[h])) for h, (s, n) in enumerate(rows)])
    return kept


@pytest.mark.parametrize("method", METHODS)
def test_every_head_keeps_the_header_and_the_window(method, tmp_path):
    engine = _engine(method, tmp_path)
    (ids,) = random_prompts([57], seed=3)
    state = engine.prefill([ids], kv_size=KV_SIZE, max_new_tokens=1, header_tokens=HEADER)
    n, window = len(ids), engine.method.scoring.window
    assert int(state.kept[0].sum()) == KV_SIZE * 3 * 2
    for layer in _kept_sets(engine, state, ids):
        for positions in layer:
            assert set(range(n - window - HEADER, n)) <= set(positions)


def test_snapkv_with_a_header_keeps_the_definitions_tokens(tmp_path):
    engine = _engine("snapkv", tmp_path)
    (ids,) = random_prompts([57], seed=4)
    state = engine.prefill([ids], kv_size=KV_SIZE, max_new_tokens=1, header_tokens=HEADER)
    plain = _kept_sets(engine, engine.prefill([ids], kv_size=KV_SIZE, max_new_tokens=1), ids)
    n, scoring = len(ids), engine.method.scoring
    kept = _kept_sets(engine, state, ids)
    for layer, (q, k) in enumerate(_post_rope_qk(engine.model, ids)):
        scores = _scores_by_hand(scoring, q, k, WINDOW, HEADER, q.shape[-1] ** -0.5, None)
        top = scores.sort(dim=1, descending=True, stable=True).indices[:, : KV_SIZE - WINDOW - HEADER]
        for head, positions in enumerate(kept[layer]):
            assert positions == sorted(set(top[head].tolist()) | set(range(n - WINDOW - HEADER, n)))
    assert kept != plain  # the window moved: a positive control for the comparison above


def test_text_prompts_carry_their_header_and_question_window_false_is_the_plain_window(tmp_path):
    engine = _engine("snapkv", tmp_path)
    prompt = "the cat sat on the mat; the dog lay by the door. where did the cat sit? answer:"
    ids, header = engine.encode_with_header(prompt)
    on = engine.generate(prompt, kv_size=KV_SIZE, max_new_tokens=3)
    off = engine.generate(prompt, kv_size=KV_SIZE, max_new_tokens=3, question_window=False)
    assert (on.stats.header_tokens, off.stats.header_tokens) == (HEADER, 0)
    (from_ids_on,) = engine.generate_ids([ids], kv_size=KV_SIZE, max_new_tokens=3, header_tokens=header)
    (from_ids_off,) = engine.generate_ids([ids], kv_size=KV_SIZE, max_new_tokens=3)
    assert (on.token_ids, off.token_ids) == (from_ids_on.token_ids, from_ids_off.token_ids)
    (swept_on, swept_off) = (engine.sweep(prompt, [("snapkv", KV_SIZE)], max_new_tokens=3, question_window=flag)[0]
                             for flag in (True, False))
    assert (swept_on.token_ids, swept_off.token_ids) == (on.token_ids, off.token_ids)
    assert engine.encode_with_header(prompt, chat_template=False)[1] == 0
    assert sum(map(sum, on.stats.kept_tokens)) == sum(map(sum, off.stats.kept_tokens)) == KV_SIZE * 3 * 2


def test_kv_size_must_hold_the_window_and_the_header(tmp_path):
    engine = _engine("snapkv", tmp_path)
    (ids,) = random_prompts([40], seed=6)
    with pytest.raises(ValueError, match=r"kv_size must be an int >= 11 .*3-token chat-template assistant header"):
        engine.generate_ids([ids], kv_size=WINDOW + HEADER - 1, max_new_tokens=2, header_tokens=HEADER)
    engine.generate_ids([ids], kv_size=WINDOW + HEADER, max_new_tokens=2, header_tokens=HEADER)
    with pytest.raises(ValueError, match=r"header_tokens\[0\] must be an int in \[0, 39\]"):
        engine.generate_ids([ids], kv_size=KV_SIZE, max_new_tokens=2, header_tokens=40)
    with pytest.raises(ValueError, match="header_tokens=3 goes with token ids"):
        engine.sweep("some text", [("snapkv", KV_SIZE)], max_new_tokens=2, header_tokens=HEADER)


def test_backends_agree_with_a_header(tmp_path):
    (ids,) = random_prompts([41], seed=7)
    states, kept = [], []
    for backend in ("torch", "triton"):
        engine = _engine("ada-snapkv", tmp_path, backend)
        with torch.inference_mode():
            states.append(engine.prefill([ids], kv_size=16, max_new_tokens=1, header_tokens=HEADER))
        kept.append(_kept_sets(engine, states[-1], ids))
    assert kept[0] == kept[1]
    torch.testing.assert_close(states[0].logits, states[1].logits)


def test_head_scoring_trial_prompts_carry_their_header():
    """calibrate-defaults scores its trial prompts with the question window, as the engine does: the trial's header
    is the template's, and none without the template."""
    from raggedkv.engine.heads.needles import RETRIEVAL_NEEDLES
    from raggedkv.engine.heads.prompt import build_trial_prompt

    tokenizer = chat_tokenizer()
    chat = build_trial_prompt(tokenizer, RETRIEVAL_NEEDLES[0], 300, 50, chat=True)
    assert chat.header == HEADER and tokenizer.decode(chat.ids[-HEADER:]) == ")A:"
    assert build_trial_prompt(tokenizer, RETRIEVAL_NEEDLES[0], 300, 50, chat=False).header == 0
