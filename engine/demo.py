"""`raggedkv demo`: find a needle in a ~2K-token haystack with SmolLM2-135M-Instruct, keeping 64 tokens per head.

The haystack is the project's own filler text (`raggedkv.engine.eval.haystack`); one fact (the needle) sits at
half depth and the question comes after it. The default model runs on the CPU with SnapKV at `kv_size=64` (any
method and budget can be chosen), and the demo prints the question, the answer, whether it is right, and the KV
memory kept against a full cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .default_model import DEFAULT_MODEL
from .eval.haystack import fit_haystack
from .generate import Engine
from .outputs import GenerationResult, format_kv_memory, format_stats

PROMPT_TOKENS = 2048
MAX_NEW_TOKENS = 32
NEEDLE = "Remember this: the magic number is 7301."
QUESTION = "What is the magic number?"
ANSWER = "7301"
DEPTH_PERCENT = 50


@dataclass(frozen=True)
class DemoResult:
    """The demo's question, the model's answer, whether it contains the expected one, and the full result."""

    question: str
    answer: str
    correct: bool
    result: GenerationResult


def build_prompt(count_tokens: Callable[[str], int]) -> tuple[str, int]:
    """The haystack with the needle at `DEPTH_PERCENT`, then the question: (prompt, its token count <= 2048)."""
    def render(context: str) -> str:
        return f"{context}\n\nAnswer the question from the text above. {QUESTION}"

    return fit_haystack(render, count_tokens, PROMPT_TOKENS, [(DEPTH_PERCENT, NEEDLE)])


def run_demo(model: str = DEFAULT_MODEL, *, method: str = "snapkv", kv_size: int = 64,
             verbose: bool = True) -> DemoResult:
    """Load `model` on the CPU (torch backend), answer the needle question with `method` at `kv_size`."""
    say = print if verbose else (lambda *args: None)
    start = time.perf_counter()
    engine = Engine.from_pretrained(model, method=method, device="cpu", backend="torch")
    prompt, tokens = build_prompt(lambda text: len(engine.encode(text)))
    say(f"raggedkv demo: {model}, {method} at kv_size={kv_size}, {engine.backend.name} backend on the CPU")
    say(f"prompt:   {tokens} tokens of filler with one fact hidden at {DEPTH_PERCENT}% depth")
    say(f"question: {QUESTION}")
    result = engine.generate(prompt, kv_size=kv_size, max_new_tokens=MAX_NEW_TOKENS)
    answer = result.text.strip()
    correct = ANSWER in answer
    say(f"answer:   {answer}")
    say(f"correct:  {'yes' if correct else 'no'} (expected {ANSWER})")
    say(f"KV cache: {format_kv_memory(result.stats)} kept, vs a full cache of the same prompt")
    say()
    say(format_stats(result))
    say(f"total time: {time.perf_counter() - start:.1f} s")
    return DemoResult(QUESTION, answer, correct, result)
