"""The evaluations' view of the engine: the model loaded once, an `Engine` per method over it, prompts answered in
every (method, kv_size) cell at once with `Engine.sweep` (one prefill per prompt).

Prompts are tokenized here with the engine's own `encode` (the chat template applied by the engine when asked), so
the lengths the evaluations fit prompts to are the lengths the model sees. Answers are cut at the first stop
token (the model's EOS, the end-of-turn tokens its vocabulary has, optionally a newline) and decoded without
special tokens; the fraction of the KV cache kept comes from the engine's stats.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .prompting import cut_at_stop, stop_token_ids


@dataclass(frozen=True, slots=True)
class Answer:
    """One generated answer.

    text: the answer, cut at the first stop token, without special tokens.
    prompt_tokens: the prompt's length in tokens.
    kept_fraction: K/V bytes of the prompt kept after compression / bytes of the full cache of the same prompt.
    seconds: wall time of the prompt's sweep (one prefill, every cell decoded together) divided by its cells.
    """

    text: str
    prompt_tokens: int
    kept_fraction: float
    seconds: float


class Runner:
    """Loads the model on first use and answers prompts with any method over it (one `Engine` per method).

    Args:
        model: model name or local Hugging Face folder, as `Engine.from_pretrained` takes it.
        backend: the engine's backend ("auto", "torch", "triton").
        question_window: chat prompts score with the window before the template's assistant header and keep the
            header in every head (`Engine.generate`'s `question_window`); False scores with the last prompt tokens.
        head_scores: head-score file per method name (a variant uses its name's), for methods that take one (headkv-r,
            headkv-r2, compresskv); methods not listed use the engine's default for the model.
    """

    def __init__(self, model: str, backend: str = "auto", head_scores: Mapping[str, str] | None = None,
                 question_window: bool = True):
        self.model, self.backend, self.head_scores = model, backend, dict(head_scores or {})
        self.question_window = question_window
        self._engines: dict[str, object] = {}

    def engine(self, method: str):
        """The engine for `method` (the first call loads the model)."""
        if method not in self._engines:
            from raggedkv.engine import Engine

            options = {"head_scores": self.head_scores.get(method.partition(":")[0]), "backend": self.backend}
            if self._engines:
                loaded = next(iter(self._engines.values()))
                engine = Engine.from_model(loaded.model, loaded.tokenizer, method, **options)
            else:
                engine = Engine.from_pretrained(self.model, method=method, **options)
            self._engines[method] = engine
        return self._engines[method]

    def _any_engine(self):
        return next(iter(self._engines.values())) if self._engines else self.engine("full")

    @property
    def tokenizer(self):
        """The model's tokenizer."""
        return self._any_engine().tokenizer

    @property
    def context_length(self) -> int:
        """The model's context in tokens (max_position_embeddings)."""
        return self._any_engine().model.config.max_position_embeddings

    def encode(self, text: str, chat: bool) -> list[int]:
        """Token ids of `text` as the model sees it (as a chat user turn if `chat` and the model has a template)."""
        return self._any_engine().encode(text, chat_template=chat)

    def sweep(
        self,
        prompt: str,
        cells: Sequence[tuple[str, int | None]],
        max_new_tokens: int,
        chat: bool,
        newline_stops: bool = False,
    ) -> list[Answer]:
        """Greedy answers to `prompt` in every `(method, kv_size)` cell (kv_size None: keep the whole prompt), from
        one prefill; `seconds` is the call's wall time divided by the number of cells."""
        engine = self._any_engine()
        stops = stop_token_ids(engine.tokenizer, engine.eos_ids, newline=newline_stops)
        variants = [(self.engine(method).method, kv_size) for method, kv_size in cells]
        start = time.perf_counter()
        ids, header = engine.encode_with_header(prompt, chat_template=chat)
        results = engine.sweep(ids, variants, max_new_tokens=max_new_tokens,
                               header_tokens=header if self.question_window else 0)
        seconds = (time.perf_counter() - start) / len(cells)
        return [
            Answer(
                text=engine.tokenizer.decode(cut_at_stop(result.token_ids, stops), skip_special_tokens=True),
                prompt_tokens=result.stats.prompt_tokens,
                kept_fraction=result.stats.kv_fraction_kept,
                seconds=seconds,
            )
            for result in results
        ]
