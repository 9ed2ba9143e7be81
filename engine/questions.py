"""Context and questions: compress a context once, question-agnostic (the kvpress convention), and answer each question
from its own copy of the compressed cache.

The split of the token ids (`encode_context_and_questions`). With the tokenizer's chat template, the user turn's
content is the context followed directly by the question (put a separator such as ``"\\n"`` at the end of the
context or the start of a question if you want one), and the templated text is cut at the end of the context:

* compressed: the ids of the templated text up to the end of the context (system prompt, user header, context);
* fed after compression, per question: the ids of the question followed by the rest of the template (end of the
  user turn and the assistant header that `add_generation_prompt=True` adds).

Without a chat template (or with `chat_template=False`), the context is tokenized as a prompt (with the tokenizer's
special tokens, e.g. BOS) and each question without special tokens. The two parts are tokenized separately, so a
token that would straddle the boundary is split there; that is the documented reference every answer equals:
compress those context ids alone, feed that question's ids, decode.

How a batch runs (`answer_questions`): the context is prefilled once, and each question gets its own sequence of
one ragged cache (the runner's variants of one prompt: one forward, then each variant compresses every layer into
its own segments, identically, since compression does not depend on the question). Then all sequences step
together through `ModelRunner.advance`: a sequence is fed its question's tokens while it has some left and its
sampled tokens afterwards, so questions of different lengths share the steps; a sequence's answer starts with the
token sampled after its question's last token. Greedy answers equal those of one sequence per question.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .checks import check_kv_size, check_prompt_ids, check_sampling, check_text_prompts
from .hf import ATTENTION_NAME
from .models import attention_implementation
from .outputs import GenerationResult
from .runner import EOS_CHECK_EVERY_CUDA, Decoded, ModelRunner, Prefilled, SamplingParams, Variant, synchronize
from .sampling import sample

_CUT = "\x00raggedkv-context-end\x00"  # marks the end of the context in the templated text


def generate_answers(
    engine: Any,
    context: object,
    questions: object,
    *,
    kv_size: int | None,
    chat_template: bool,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
) -> list[GenerationResult]:
    """`Engine.generate(context, question=...)` / `questions=[...]`: one `GenerationResult` per question, in order.

    Each result's stats describe the compressed context (`prompt_tokens` counts its tokens, not the question's).
    Arguments as in `Engine.generate`; `questions` is a non-empty list of non-empty strings.
    """
    if not isinstance(context, str):
        raise TypeError(f"with questions, prompt must be one context string, got {type(context).__name__}")
    (context,) = check_text_prompts(context)
    if isinstance(questions, str) or not isinstance(questions, Sequence) or not questions:
        raise ValueError(f"questions must be a non-empty list of strings, got {questions!r:.80}")
    for i, question in enumerate(questions):
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"questions[{i}] must be a non-empty string, got {question!r:.80}")
    check_sampling(max_new_tokens, temperature, top_p, seed)
    check_kv_size(kv_size, engine.method)
    context_ids, question_ids = encode_context_and_questions(
        engine.tokenizer, context, list(questions), chat_template=chat_template
    )
    check_prompt_ids([context_ids + ids for ids in question_ids], engine.model.config, max_new_tokens)
    sampling = SamplingParams(max_new_tokens, temperature, top_p, seed)
    if seed is None and engine.runner.parallel and temperature > 0:
        seed = engine.runner.parallel.shared_seed()  # tensor parallel: every rank must draw the same tokens
    generator = None if seed is None else torch.Generator(device=engine.device).manual_seed(seed)
    variants = [Variant(0, engine.method, kv_size) for _ in questions]
    headroom = max(map(len, question_ids)) + max_new_tokens - 1
    with torch.inference_mode(), attention_implementation(engine.model, ATTENTION_NAME):
        state = engine.runner.prefill([context_ids], variants, headroom + 1)
        decoded = answer_questions(engine.runner, state, question_ids, sampling, generator)
    return engine._results(state, decoded)


def encode_context_and_questions(
    tokenizer: PreTrainedTokenizerBase, context: str, questions: list[str], *, chat_template: bool = True
) -> tuple[list[int], list[list[int]]]:
    """(ids compressed: the context's, ids fed after it: one list per question), split as the module docstring says.

    Raises:
        ValueError: the chat template does not keep the user's text verbatim, so the end of the context cannot be
            found in the templated text.
    """
    if chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": context + _CUT}], tokenize=False, add_generation_prompt=True
        )
        if text.count(_CUT) != 1:
            raise ValueError(
                "the tokenizer's chat template does not keep the user's text verbatim, so the end of the context "
                "cannot be located; pass chat_template=False"
            )
        prefix, suffix = text.split(_CUT)
        context_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        return context_ids, [tokenizer(q + suffix, add_special_tokens=False)["input_ids"] for q in questions]
    context_ids = tokenizer(context)["input_ids"]
    return context_ids, [tokenizer(q, add_special_tokens=False)["input_ids"] for q in questions]


def answer_questions(
    runner: ModelRunner,
    state: Prefilled,
    question_ids: list[list[int]],
    sampling: SamplingParams,
    generator: torch.Generator | None,
) -> Decoded:
    """Feed sequence `i` of `state` (the context, compressed) its question `question_ids[i]`, then decode its answer.

    The cache needs `max(len(q)) + sampling.max_new_tokens - 1` rows of headroom (the ragged attention
    implementation must be selected). Returns `Decoded` with int64 `[batch, <= max_new_tokens]` answer tokens, left
    aligned (a row that ended early holds its end token; what follows it is padding), the steps and their seconds.
    """
    device, max_new = runner.device, sampling.max_new_tokens
    lens = torch.tensor([len(q) for q in question_ids], device=device)
    longest = int(lens.max())
    forced = torch.zeros(len(question_ids), longest, dtype=torch.int64, device=device)
    for row, ids in enumerate(question_ids):
        forced[row, : len(ids)] = torch.tensor(ids, device=device)
    answers = torch.zeros(len(question_ids), max_new, dtype=torch.int64, device=device)
    eos = torch.tensor(runner.eos_ids, dtype=torch.int64, device=device)
    finished = torch.zeros(len(question_ids), dtype=torch.bool, device=device)
    inputs = runner.step_inputs(state, forced[:, 0])
    capture_seconds = runner.prepare(state, inputs)  # graph mode: capture the step before the timer
    check_every = EOS_CHECK_EVERY_CUDA if device.type == "cuda" else 1
    start, steps = time.perf_counter(), 0
    for step in range(longest - 1 + max_new):
        answer_index = step - (lens - 1)  # [batch]: which answer token this step's logits give (< 0: none yet)
        if step % check_every == 0 and bool((finished | (answer_index >= max_new)).all()):
            break
        logits = runner.advance(state, inputs)
        sampled = sample(logits, sampling.temperature, sampling.top_p, generator)
        answering = (answer_index >= 0) & (answer_index < max_new) & ~finished
        column = answer_index.clamp(0, max_new - 1)[:, None]  # written only where answering: no device read
        answers.scatter_(1, column, torch.where(answering[:, None], sampled[:, None], answers.gather(1, column)))
        finished |= answering & torch.isin(sampled, eos)
        next_forced = forced[:, min(step + 1, longest - 1)]
        inputs.tokens.copy_(torch.where(step + 1 < lens, next_forced, sampled)[:, None])
        inputs.positions.add_(1)
        steps = step + 1
    synchronize(device)
    produced = int((steps - (lens - 1)).clamp(0, max_new).max())
    return Decoded(answers[:, :produced], steps, time.perf_counter() - start, runner.mode, capture_seconds)
