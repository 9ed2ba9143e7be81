"""Next-token choice: greedy, or temperature / top-p sampling without host synchronisation."""

from __future__ import annotations

import torch


def sample(
    logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick one token per row.

    Args:
        logits: `[batch, vocab]` (any float dtype; computed in fp32).
        temperature: 0 means greedy (argmax); otherwise the softmax temperature.
        top_p: nucleus size in (0, 1]; the smallest set of tokens whose probability reaches `top_p` is kept.
        generator: random source for sampling (seeded for reproducible runs).

    Returns:
        int64 `[batch]` token ids on `logits`' device. Sampling draws `argmax(p / E)` with `E ~ Exp(1)`, which is
        distributed as `p` and needs no `torch.multinomial` (no device-to-host copy).
    """
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p  # mass before this token already reaches p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / noise).argmax(dim=-1)
