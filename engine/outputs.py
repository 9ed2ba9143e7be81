"""What a generation returns: the text and token ids of each sequence, and what its cache kept and cost."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationStats:
    """What one sequence's generation kept and cost.

    kept_tokens: `[num_layers][num_kv_heads]` prompt tokens each KV head keeps (window included).
    kv_bytes_kept / kv_bytes_full: K+V bytes of the prompt in the ragged cache after prefill (measured from the
        segment lengths) / in an uncompressed cache of the same prompt. kv_bytes_allocated adds decode headroom.
    compressed: False when every head keeps the whole prompt (`method="full"`, no `kv_size`, or
        `kv_size >= prompt_tokens`).
    prefill_seconds: this sequence's prefill. decode_seconds, decode_steps, decode_tokens_per_s: the batch's decode
        loop (tokens/s counts every sequence of the batch: `batch_size * decode_steps / decode_seconds`).
    """

    prompt_tokens: int
    new_tokens: int
    method: str
    kv_size: int | None
    compressed: bool
    kept_tokens: list[list[int]]
    kv_bytes_kept: int
    kv_bytes_full: int
    kv_bytes_allocated: int
    backend: str
    device: str
    batch_size: int
    prefill_seconds: float
    decode_seconds: float
    decode_steps: int
    decode_tokens_per_s: float

    @property
    def kv_fraction_kept(self) -> float:
        """kv_bytes_kept / kv_bytes_full."""
        return self.kv_bytes_kept / self.kv_bytes_full


@dataclass(frozen=True)
class GenerationResult:
    """One sequence's output: generated text and token ids (the end token included when one stopped it)."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "eos" or "length"
    stats: GenerationStats
