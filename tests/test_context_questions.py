"""Context and questions: `Engine.generate(context, questions=[...])` compresses the context once and each answer equals
the documented reference (compress the context ids alone, feed that question's ids, decode)."""

from __future__ import annotations

import pytest
import torch
from raggedkv.engine import Engine
from raggedkv.engine.hf import ATTENTION_NAME
from raggedkv.engine.models import attention_implementation
from raggedkv.engine.questions import encode_context_and_questions
from raggedkv.engine.runner import SamplingParams, Variant
from raggedkv.engine.sampling import sample

from tests.engine_helpers import char_tokenizer, tiny_model

# a template over the character tokenizer's alphabet: "user: <content>\n" then "assistant:" (the generation prompt)
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
CONTEXT = "the red key is in the blue box. the green key is under the old mat. "
QUESTIONS = ["where is the red key?", "green key?", "which box holds a key, and what colour is it?"]
KV_SIZE = 16
NEW_TOKENS = 6


def templated_tokenizer():
    tokenizer = char_tokenizer()
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def reference_answer(engine, context_ids, question_ids, kv_size, max_new_tokens):
    """The documented reference: the context ids compressed alone, the question's ids teacher-forced, then decode."""
    runner = engine.runner
    with torch.inference_mode(), attention_implementation(engine.model, ATTENTION_NAME):
        state = runner.prefill([context_ids], [Variant(0, engine.method, kv_size)],
                               len(question_ids) + max_new_tokens)
        logits = runner.teacher_force(state, torch.tensor([question_ids]))
        first = sample(logits[:, -1])
        decoded = runner.decode(state, first, SamplingParams(max_new_tokens), None)
    tokens = decoded.tokens[0].tolist()
    stop = next((i for i, t in enumerate(tokens) if t in engine.eos_ids), None)
    return tokens if stop is None else tokens[: stop + 1]


def test_the_split_with_a_chat_template_and_without():
    tokenizer = templated_tokenizer()
    context_ids, question_ids = encode_context_and_questions(tokenizer, CONTEXT, QUESTIONS)
    assert context_ids == tokenizer("user: " + CONTEXT, add_special_tokens=False)["input_ids"]
    for question, ids in zip(QUESTIONS, question_ids, strict=True):
        assert ids == tokenizer(question + "\nassistant:", add_special_tokens=False)["input_ids"]
        whole = tokenizer.apply_chat_template([{"role": "user", "content": CONTEXT + question}], tokenize=False,
                                              add_generation_prompt=True)
        assert tokenizer.decode(context_ids + ids) == whole
    plain_context, plain_questions = encode_context_and_questions(tokenizer, CONTEXT, QUESTIONS, chat_template=False)
    assert plain_context == tokenizer(CONTEXT)["input_ids"]
    assert plain_questions == [tokenizer(q, add_special_tokens=False)["input_ids"] for q in QUESTIONS]


@pytest.mark.parametrize(("family", "method", "chat_template"),
                         [("llama", "snapkv", True), ("qwen3", "pyramidkv", True), ("llama", "snapkv", False)])
def test_each_answer_equals_the_documented_reference(family, method, chat_template):
    engine = Engine.from_model(tiny_model(family, seed=41), templated_tokenizer(), method=method, backend="torch")
    results = engine.generate(CONTEXT, questions=QUESTIONS, kv_size=KV_SIZE, max_new_tokens=NEW_TOKENS,
                              chat_template=chat_template)
    context_ids, question_ids = encode_context_and_questions(engine.tokenizer, CONTEXT, QUESTIONS,
                                                             chat_template=chat_template)
    assert len({len(ids) for ids in question_ids}) == len(QUESTIONS)  # different lengths share the steps
    for result, ids in zip(results, question_ids, strict=True):
        assert result.token_ids == reference_answer(engine, context_ids, ids, KV_SIZE, NEW_TOKENS)
        assert result.stats.prompt_tokens == len(context_ids) > KV_SIZE and result.stats.compressed
        assert sum(map(sum, result.stats.kept_tokens)) == KV_SIZE * 2 * 2
        assert 1 <= len(result.token_ids) <= NEW_TOKENS


def test_one_question_and_seeded_sampling():
    engine = Engine.from_model(tiny_model("mistral", seed=42), templated_tokenizer(), method="snapkv",
                               backend="torch")
    one = engine.generate(CONTEXT, question=QUESTIONS[1], kv_size=KV_SIZE, max_new_tokens=NEW_TOKENS)
    listed = engine.generate(CONTEXT, questions=[QUESTIONS[1]], kv_size=KV_SIZE, max_new_tokens=NEW_TOKENS)
    assert one.token_ids == listed[0].token_ids
    sampled = [engine.generate(CONTEXT, questions=QUESTIONS, kv_size=KV_SIZE, max_new_tokens=NEW_TOKENS,
                               temperature=1.0, seed=seed) for seed in (5, 5)]
    assert [r.token_ids for r in sampled[0]] == [r.token_ids for r in sampled[1]]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"question": "a?", "questions": ["b?"]}, ValueError, "give question= .* or questions= .*, not both"),
        ({"questions": []}, ValueError, "questions must be a non-empty list of strings"),
        ({"questions": "a?"}, ValueError, "questions must be a non-empty list of strings"),
        ({"questions": ["a?", " "]}, ValueError, r"questions\[1\] must be a non-empty string"),
        ({"question": "a?", "prompt": ["x", "y"]}, TypeError, "prompt must be one context string, got list"),
        ({"question": "a?", "max_new_tokens": 0}, ValueError, "max_new_tokens"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, message):
    engine = Engine.from_model(tiny_model(seed=43), templated_tokenizer(), method="snapkv", backend="torch")
    prompt = kwargs.pop("prompt", CONTEXT)
    with pytest.raises(error, match=message):
        engine.generate(prompt, **kwargs)


def test_the_pipeline_task_gives_the_engines_answers():
    import transformers
    from raggedkv.engine.qa_pipeline import TASK

    model, tokenizer = tiny_model("llama", seed=44), templated_tokenizer()
    qa = transformers.pipeline(TASK, model=model, tokenizer=tokenizer, method="snapkv", backend="torch",
                               kv_size=KV_SIZE, max_new_tokens=NEW_TOKENS)
    engine = Engine.from_model(model, tokenizer, method="snapkv", backend="torch")
    expected = engine.generate(CONTEXT, questions=QUESTIONS, kv_size=KV_SIZE, max_new_tokens=NEW_TOKENS)
    assert qa(CONTEXT, questions=QUESTIONS) == [{"question": q, "answer": r.text}
                                                for q, r in zip(QUESTIONS, expected, strict=True)]
    assert qa(CONTEXT, question=QUESTIONS[0]) == {"question": QUESTIONS[0], "answer": expected[0].text}
    with pytest.raises(ValueError, match=r"unknown keywords \['beams'\]"):
        qa(CONTEXT, question=QUESTIONS[0], beams=2)
    with pytest.raises(ValueError, match="needs question= or questions="):
        qa(CONTEXT)
