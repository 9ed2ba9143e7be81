"""One head-scoring trial: build the prompt, decode greedily while scoring every step, check the answer.

Decoding stops after a token containing a newline or an end-of-sequence token (the published stop rule), after
`max_new_tokens`, and for the reasoning kind once as many tokens as the answer has were generated (the R2 script).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..models import eos_token_ids, model_shape
from .acceptance import accepted, answer_metric
from .needles import Needle
from .prompt import build_trial_prompt
from .scoring import STEP_RULES
from .trace import greedy_trace


@dataclass(frozen=True, slots=True)
class TrialSpec:
    """Where a trial sits in the grid; `id` is its key in the resumable trial log."""

    needle: int
    length: int
    depth: float

    @property
    def id(self) -> str:
        return f"n{self.needle}-L{self.length}-d{self.depth:g}"


def run_trial(model, tokenizer, kind: str, needle: Needle, spec: TrialSpec, chat: bool,
              max_new_tokens: int) -> dict:
    """Run one trial and return its log record: grid position, prompt size, span, response, answer metric,
    acceptance, seconds and the per-head scores summed over the steps (`[layers][heads]` floats)."""
    started = time.perf_counter()
    prompt = build_trial_prompt(tokenizer, needle, spec.length, spec.depth, chat)
    prompt_ids = torch.tensor(prompt.ids)
    answer_len = prompt.span[1] - prompt.span[0]
    step_limit = min(max_new_tokens, answer_len) if kind == "reasoning" else max_new_tokens
    eos = set(eos_token_ids(model))

    def stop(token: int) -> bool:
        return token in eos or "\n" in tokenizer.decode([token])

    rule = STEP_RULES[kind]
    shape = model_shape(model.config)
    scores = torch.zeros(shape.num_layers, shape.num_qo_heads, dtype=torch.float64)
    generated: list[int] = []
    for step in greedy_trace(model, prompt.ids, step_limit, stop):
        scores += rule(step.attention, step.token, prompt_ids, prompt.span)
        generated.append(step.token)
    response = tokenizer.decode(generated, skip_special_tokens=True).strip()
    metric = answer_metric(kind, response, needle.answer)
    return {
        "id": spec.id, "needle": spec.needle, "length": spec.length, "depth": spec.depth,
        "prompt_tokens": len(prompt.ids), "span": list(prompt.span), "response": response, "metric": metric,
        "accepted": accepted(metric), "seconds": round(time.perf_counter() - started, 3), "scores": scores.tolist(),
    }
