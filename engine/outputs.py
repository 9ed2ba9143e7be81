"""What a generation returns: the text and token ids of each sequence, and what its cache kept and cost; and how
a result is shown (JSON, a stats table)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class GenerationStats:
    """What one sequence's generation kept and cost.

    kept_tokens: `[num_layers][num_kv_heads]` prompt tokens each KV head keeps (window and header included).
    header_tokens: the prompt's trailing chat-template assistant-header tokens that every head kept and the window
        just before them scored around (the question-aware window); 0: the last window tokens scored.
    kv_bytes_kept / kv_bytes_full: K+V bytes of the prompt in the ragged cache after prefill (measured from the
        segment lengths) / in an uncompressed cache of the same prompt. kv_bytes_allocated adds decode headroom.
    compressed: False when every head keeps the whole prompt (`method="full"`, no `kv_size`, or
        `kv_size >= prompt_tokens`).
    prefill_seconds: this sequence's prefill. decode_seconds, decode_steps, decode_tokens_per_s: the batch's decode
        loop (tokens/s counts every sequence of the batch: `batch_size * decode_steps / decode_seconds`).
    decode_mode: ``"cuda-graph"`` (one captured step replayed per token) or ``"eager"``. graph_capture_seconds: the
        batch's warm-up plus capture (0.0 in eager mode), not part of decode_seconds.
    tensor_parallel: ranks the KV heads are split over (1: one device); kept_tokens and the KV bytes cover all of
        them. rank_kept_tokens: prompt tokens each rank keeps, summed over layers (None without tensor
        parallelism). slowest_rank_factor: `sum over layers of the fullest rank's tokens / the mean rank's`, how much
        longer a decode step's attention waits than with a perfect split (1.0 = balanced; `parallel_budgets`).
    """

    prompt_tokens: int
    new_tokens: int
    method: str
    kv_size: int | None
    header_tokens: int
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
    decode_mode: str = "eager"
    graph_capture_seconds: float = 0.0
    tensor_parallel: int = 1
    rank_kept_tokens: list[int] | None = None
    slowest_rank_factor: float = 1.0

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


def result_json(result: GenerationResult) -> dict:
    """A JSON-ready dict of a result: text, token ids, finish reason and every stat."""
    out = dataclasses.asdict(result)
    out["stats"]["kv_fraction_kept"] = result.stats.kv_fraction_kept
    return out


def format_kv_memory(stats: GenerationStats) -> str:
    """`0.21 MiB of 3.52 MiB (5.9%)`: KV bytes kept vs a full cache of the same prompt."""
    return (f"{stats.kv_bytes_kept / MIB:.2f} MiB of {stats.kv_bytes_full / MIB:.2f} MiB "
            f"({100 * stats.kv_fraction_kept:.1f}%)")


def format_stats(result: GenerationResult) -> str:
    """A short fixed-width table of one result's stats."""
    stats = result.stats
    kept = [k for layer in stats.kept_tokens for k in layer]
    budget = "none (keep all)" if stats.kv_size is None else str(stats.kv_size)
    rows = [
        ("prompt tokens", f"{stats.prompt_tokens}"),
        ("new tokens", f"{stats.new_tokens} ({result.finish_reason})"),
        ("method", f"{stats.method}, kv_size {budget}, compression {'on' if stats.compressed else 'off'}"),
        ("scoring window", f"before the {stats.header_tokens}-token assistant header (kept)" if stats.header_tokens
         else "the last prompt tokens"),
        ("kept per head", f"mean {sum(kept) / len(kept):.1f}, min {min(kept)}, max {max(kept)} tokens"),
        ("KV cache kept", format_kv_memory(stats)),
        ("backend", f"{stats.backend} on {stats.device}"),
        ("prefill", f"{stats.prefill_seconds:.2f} s"),
        ("decode", f"{stats.decode_seconds:.2f} s, {stats.decode_tokens_per_s:.1f} tokens/s"),
        ("decode mode", stats.decode_mode + (f", captured in {stats.graph_capture_seconds:.2f} s"
                                             if stats.decode_mode == "cuda-graph" else "")),
    ]
    if stats.tensor_parallel > 1:
        rows.append(("tensor parallel", f"{stats.tensor_parallel} ranks keep {stats.rank_kept_tokens} tokens, "
                                        f"slowest rank {stats.slowest_rank_factor:.2f}x the mean"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
