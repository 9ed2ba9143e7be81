"""Next-token choice: greedy, or temperature / top-p sampling without host synchronisation."""

from __future__ import annotations

import torch

MIN_TEMPERATURE = 1e-30  # 1 / MIN_TEMPERATURE is finite in fp32 and already keeps only the maximal logits


def sample(
    logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick one token per row.

    Args:
        logits: `[batch, vocab]` (any float dtype; computed in fp32).
        temperature: finite, >= 0; 0 means greedy (argmax), otherwise the softmax temperature. Logits are shifted
            by their row maximum before they are scaled, so no temperature overflows them: one below
            `MIN_TEMPERATURE` (where the scaled gaps already exceed fp32's range) samples as `MIN_TEMPERATURE`,
            which keeps only the maximal logits.
        top_p: nucleus size, finite, in (0, 1]; the smallest set of tokens whose probability reaches `top_p` is
            kept.
        generator: random source for sampling (seeded for reproducible runs).

    The engine checks `temperature` and `top_p` once per call (`checks.check_sampling`) rather than per step.

    Returns:
        int64 `[batch]` token ids on `logits`' device. Sampling draws `argmax(p / E)` with `E ~ Exp(1)`, which is
        distributed as `p` and needs no `torch.multinomial` (no device-to-host copy).
    """
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    shifted = logits - logits.max(dim=-1, keepdim=True).values  # <= 0, exactly 0 at the maximum
    probs = torch.softmax(shifted * (1.0 / max(temperature, MIN_TEMPERATURE)), dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p  # mass before this token already reaches p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / noise).argmax(dim=-1)
