"""Property tests over the public API (`Engine.from_model`, `generate`, `generate_ids`, `sweep`) on a tiny random
Llama: with random, often hostile, methods, method parameters, kv_sizes, prompts and sampling values, every call
either returns valid results or raises ValueError/TypeError naming one of the arguments it was given; never another
exception. With arguments drawn only from the accepted ranges, every call returns valid results."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raggedkv.engine import Engine, GenerationResult
from raggedkv.engine.arguments import Choice, Int, Real
from raggedkv.engine.methods import METHODS, get_method

from tests.engine_helpers import VOCAB, char_tokenizer, tiny_model

LAYERS, HEADS, KV_HEADS, CONTEXT = 2, 4, 2, 96
HOSTILE = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ACCEPTED = settings(HOSTILE, max_examples=15)

HEAD_SCORES = {f"{layer}-{head}": [1.0 + (3 * layer + head) % 4] for layer in range(LAYERS) for head in range(HEADS)}
SCORE_FILES = {"headkv-r": {"head_scores": HEAD_SCORES}, "headkv-r2": {"head_scores": HEAD_SCORES},
               "compresskv": {"head_scores": HEAD_SCORES, "layer_scores": {"avg_score": [1.0, 3.0]}}}

hostile = st.one_of(
    st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0.0, 2.0),
    st.booleans(),
    st.none(),
    st.sampled_from(["max", "avg", "sum", "mean", "median", "", "8"]),
)
hostile_kv_size = st.one_of(st.none(), st.integers(-2, 70), st.sampled_from([8.0, "16", True, math.nan]))
text = st.text(alphabet="abcdefghij klmnop.?\n", min_size=0, max_size=60)
token_ids = st.lists(st.integers(-1, VOCAB), min_size=0, max_size=CONTEXT + 4)


@pytest.fixture(scope="module")
def parts():
    return tiny_model(layers=LAYERS, heads=HEADS, kv_heads=KV_HEADS, context=CONTEXT, seed=3), char_tokenizer()


def names_an_argument(error: Exception, arguments: set[str]) -> bool:
    """The message names one of `arguments` (as `name ...`, `name=...` or the prompt it is about)."""
    message = str(error)
    return any(message.startswith(name) or f"{name}=" in message or f" {name} " in f" {message} "
               for name in arguments)


def check_result(result: GenerationResult, method, kv_size: int | None, prompt_len: int, max_new: int) -> None:
    """A well-formed result whose kept tokens obey the method's contract (methods/base.py)."""
    assert isinstance(result, GenerationResult) and isinstance(result.text, str)
    assert 1 <= len(result.token_ids) <= max_new and all(0 <= t < VOCAB for t in result.token_ids)
    stats = result.stats
    assert stats.method == method.label and stats.kv_size == kv_size and stats.prompt_tokens == prompt_len
    kept = [count for layer in stats.kept_tokens for count in layer]
    assert len(kept) == LAYERS * KV_HEADS
    assert min(method.scoring.window, prompt_len) <= min(kept) and max(kept) <= prompt_len
    keeps = prompt_len if kv_size is None or method.name == "full" else min(kv_size, prompt_len)
    if not getattr(method, "faithful", False):
        assert sum(kept) == keeps * LAYERS * KV_HEADS, (method.name, kv_size, prompt_len, stats.kept_tokens)


def accepted_value(accepted) -> st.SearchStrategy:
    """Values inside what a method parameter accepts (kept small so that calls stay quick)."""
    if isinstance(accepted, Int):
        values = st.integers(accepted.minimum, accepted.minimum + 10)
        return values.map(lambda v: v | 1) if accepted.odd else values
    if isinstance(accepted, Real):
        return st.floats(accepted.low, min(accepted.high, accepted.low + 30.0), exclude_min=accepted.low_open)
    if isinstance(accepted, Choice):
        return st.sampled_from(accepted.choices)
    return st.booleans()


@st.composite
def calls(draw, hostile_values: bool):
    """One API call: its entry point, the method and its parameters, kv_size, prompt and sampling values. With
    `hostile_values`, each of them is, at random, accepted or (often) not."""

    def pick(accepted: st.SearchStrategy, refused: st.SearchStrategy, label: str):
        """One time in five (when hostile), a value from `refused`, which is often outside what is accepted."""
        refuse = hostile_values and draw(st.integers(0, 4), label=f"refuse {label}") == 0
        return draw(refused if refuse else accepted, label=label)

    name = draw(st.sampled_from(sorted(METHODS)))
    cls = METHODS[name]
    tunable = sorted(set(cls.accepts) - set(cls.score_files))  # score files: SCORE_FILES
    keys = draw(st.lists(st.sampled_from(tunable), unique=True, max_size=2)) if tunable else []
    params = {key: pick(accepted_value(cls.accepts[key]), hostile, key) for key in keys}
    sampling = {"max_new_tokens": pick(st.integers(1, 4), st.sampled_from([0, -1, 2.0, None]), "max_new_tokens")}
    if draw(st.booleans()):
        nasty = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["1", True, None]))
        sampling["temperature"] = pick(st.floats(1e-3, 3.0), nasty, "temperature")
        sampling["top_p"] = pick(st.floats(0.05, 1.0), nasty, "top_p")
        sampling["seed"] = pick(st.integers(0, 2**32), st.sampled_from([-1, 2**64, True, 1.5]), "seed")
    kv_size = pick(st.one_of(st.none(), st.integers(12, 70)), hostile_kv_size, "kv_size")
    entry = draw(st.sampled_from(["generate", "generate_ids", "sweep"]))
    words = text.filter(str.strip)
    ids = st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=80)
    good_prompt = {"generate": st.one_of(words, st.lists(words, min_size=1, max_size=2)),
                   "generate_ids": st.lists(ids, min_size=1, max_size=2), "sweep": st.one_of(words, ids)}[entry]
    prompt = pick(good_prompt, st.one_of(text, token_ids, st.lists(text, max_size=2), st.just(None)), "prompt")
    return {"entry": entry, "method": name, "params": params, "kv_size": kv_size, "prompt": prompt,
            "sampling": sampling}


def run(parts, call: dict) -> None:
    """Make the call and check every result it returns."""
    model, tokenizer = parts
    engine = Engine.from_model(model, tokenizer, method=call["method"], backend="torch",
                               **SCORE_FILES.get(call["method"], {}), **call["params"])
    prompt, kv_size, sampling = call["prompt"], call["kv_size"], call["sampling"]
    max_new = sampling.get("max_new_tokens", 64)
    if call["entry"] == "sweep":
        full = METHODS["full"]()
        results = engine.sweep(prompt, [(engine.method, kv_size), (full, None)], **sampling)
        prompt_len = len(engine.encode(prompt) if isinstance(prompt, str) else prompt)
        check_result(results[0], engine.method, kv_size, prompt_len, max_new)
        check_result(results[1], full, None, prompt_len, max_new)
        return
    if call["entry"] == "generate":
        out = engine.generate(prompt, kv_size=kv_size, **sampling)
        results, prompts = ([out], [prompt]) if isinstance(prompt, str) else (out, prompt)
        lens = [len(engine.encode(p)) for p in prompts]
    else:
        prompts = [prompt] if isinstance(prompt, list) and prompt and isinstance(prompt[0], int) else prompt
        results = engine.generate_ids(prompts, kv_size=kv_size, **sampling)
        lens = [len(ids) for ids in prompts]
    for result, prompt_len in zip(results, lens, strict=True):
        check_result(result, engine.method, kv_size, prompt_len, max_new)


@HOSTILE
@given(call=calls(hostile_values=True))
def test_every_call_returns_valid_results_or_names_the_bad_argument(parts, call):
    arguments = {"prompt", "prompt_ids", "kv_size", "method", "variants", *call["params"], *call["sampling"]}
    try:
        run(parts, call)
    except (TypeError, ValueError) as error:
        assert names_an_argument(error, arguments), f"{type(error).__name__}: {error} (call {call})"


@ACCEPTED
@given(call=calls(hostile_values=False))
def test_every_call_with_accepted_arguments_returns_valid_results(parts, call):
    minimum = get_method(call["method"], **SCORE_FILES.get(call["method"], {}), **call["params"]).min_kv_size
    if call["kv_size"] is not None:
        call["kv_size"] = max(call["kv_size"], minimum)
    run(parts, call)
