"""StreamingLLM: attention sinks plus the most recent tokens."""

from __future__ import annotations

import torch

from .allocation import uniform_budgets
from .base import Method, ModelShape, Scoring, scoring_accepts


class StreamingLLM(Method):
    """StreamingLLM (Xiao et al., 2024) as KVCache-Factory runs it at prefill (METHODS.md 3.3).

    Every KV head keeps the first `sinks` prompt tokens and the last `kv_size - sinks` ones (KVCache-Factory sets
    its window to `C - 4`, so `C = kv_size` tokens in all). Default: `sinks=4` (an int >= 0); `kv_size` must be
    at least `sinks + 1` (`min_kv_size`), so that one recent token fits, whatever the prompt's length.

    How this maps onto the engine: `Scoring(kind="recency")` scores the first `sinks` prefix tokens `+inf` and the
    others by increasing position, and the engine always keeps the last `Scoring.window` tokens. Any window of at
    most `kv_size - sinks` yields the same kept set (sinks + the most recent `kv_size - sinks` tokens); the window
    is 1 so that this holds for every `kv_size > sinks`, independent of `kv_size`. Decoding never evicts (as
    published: no rolling window after prefill).
    """

    name = "streamingllm"
    description = "attention sinks + most recent tokens (StreamingLLM, as in KVCache-Factory)"
    accepts = scoring_accepts("sinks")

    def __init__(self, sinks: int = 4) -> None:
        self.scoring = Scoring(kind="recency", window=1, sinks=sinks, pool_size=1)

    @property
    def min_kv_size(self) -> int:
        """The sinks plus the one-token window."""
        return self.scoring.sinks + self.scoring.window

    def plan(self, shape: ModelShape, prompt_len: int, kv_size: int) -> torch.Tensor:
        return uniform_budgets(shape, prompt_len, kv_size)
