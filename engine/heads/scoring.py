"""The three per-step head scores (METHODS.md 1(a) and 4.1), summed over a trial's decode steps.

Each rule takes one decode step: `attention`, fp32 `[layers, heads, context]`, the attention of the new query over
the whole cache (prompt, then generated tokens); `token`, the token that step generated; `prompt_ids`, int64
`[prompt_len]`; and the answer span `[start, end)` in the prompt. It returns the step's increment per query head,
fp64 `[layers, heads]`.

* retrieval (HeadKV-R, Eq. 1, Wu et al.'s copy-paste score): `1/|span|` for every head whose top-1 attended
  position lies in the span and holds the generated token;
* reasoning (HeadKV-R2, Eq. 2): with `k = |span|`, the attention on those of the head's top-k attended positions
  that lie in the span, divided by `|span|` (no token-identity check);
* semantic (CompressKV's semantic retrieval heads): the head's total attention on the span, added once for every
  span position holding the generated token (not normalised).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Span = tuple[int, int]
StepRule = Callable[[torch.Tensor, int, torch.Tensor, Span], torch.Tensor]


def _check(attention: torch.Tensor, prompt_ids: torch.Tensor, span: Span) -> None:
    if attention.dim() != 3:
        raise ValueError(f"attention must be [layers, heads, context], got shape {tuple(attention.shape)}")
    if prompt_ids.dim() != 1:
        raise ValueError(f"prompt_ids must be [prompt_len], got shape {tuple(prompt_ids.shape)}")
    start, end = span
    if not 0 <= start < end <= prompt_ids.numel():
        raise ValueError(f"span={span} must satisfy 0 <= start < end <= prompt_len={prompt_ids.numel()}")
    if attention.shape[-1] < prompt_ids.numel():
        raise ValueError(f"attention covers {attention.shape[-1]} positions, fewer than the prompt's "
                         f"{prompt_ids.numel()}")


def retrieval_step(attention: torch.Tensor, token: int, prompt_ids: torch.Tensor, span: Span) -> torch.Tensor:
    """Eq. 1: `1/|span|` where the head's top-1 position is in the span and holds `token`."""
    _check(attention, prompt_ids, span)
    start, end = span
    top = attention.argmax(dim=-1)
    in_span = (top >= start) & (top < end)
    copied = prompt_ids[top.clamp(max=prompt_ids.numel() - 1)] == token
    return (in_span & copied).double() / (end - start)


def reasoning_step(attention: torch.Tensor, token: int, prompt_ids: torch.Tensor, span: Span) -> torch.Tensor:
    """Eq. 2: attention on the top-`|span|` positions that fall in the span, divided by `|span|`."""
    _check(attention, prompt_ids, span)
    start, end = span
    values, positions = attention.topk(min(end - start, attention.shape[-1]), dim=-1)
    in_span = (positions >= start) & (positions < end)
    return (values.double() * in_span).sum(dim=-1) / (end - start)


def semantic_step(attention: torch.Tensor, token: int, prompt_ids: torch.Tensor, span: Span) -> torch.Tensor:
    """Total attention on the span, times the number of span positions holding `token`."""
    _check(attention, prompt_ids, span)
    start, end = span
    copies = int((prompt_ids[start:end] == token).sum())
    return attention[..., start:end].double().sum(dim=-1) * copies


STEP_RULES: dict[str, StepRule] = {"retrieval": retrieval_step, "reasoning": reasoning_step,
                                   "semantic": semantic_step}
