"""Greedy decoding that records every query head's attention from each new token over the context.

The prompt (all but its last token) is prefilled with SDPA into a `DynamicCache`, so no prompt attention matrix is
ever materialised. Each decode step then feeds one token, and the attention function registered here computes
that single query's softmax over the cached keys per query head (fp32, keys shared by the heads of a GQA group):
`[num_layers, num_qo_heads, context]` per step. The first step feeds the prompt's last token, so the first
generated token has its attention recorded too (as in the published detection scripts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ..models import attention_implementation, model_shape

TRACE_ATTENTION = "raggedkv_head_trace"


@dataclass(frozen=True, slots=True)
class Step:
    """One decode step: the generated token and the attention that produced it, fp32 `[layers, heads, context]`."""

    token: int
    attention: torch.Tensor


def _trace_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, head_trace=None, **kwargs):
    """SDPA for the prefill; for a single query with a `head_trace` list, explicit attention whose per-head
    probabilities are stored at `head_trace[layer]`."""
    if query.shape[2] != 1 or head_trace is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    batch, num_qo_heads, _, head_dim = query.shape
    group = num_qo_heads // key.shape[1]
    q = query.float().view(batch, key.shape[1], group, head_dim)
    logits = torch.einsum("bkgd,bknd->bkgn", q, key.float()) * scaling
    if attention_mask is not None:
        logits = logits + attention_mask[..., : key.shape[2]].float().view(batch, 1, 1, -1)
    probs = torch.softmax(logits, dim=-1)
    head_trace[module.layer_idx] = probs[0].reshape(num_qo_heads, -1)
    out = torch.einsum("bkgn,bknd->bkgd", probs, value.float()).reshape(batch, num_qo_heads, 1, head_dim)
    return out.transpose(1, 2).to(query.dtype), None


AttentionInterface.register(TRACE_ATTENTION, _trace_attention)


@torch.inference_mode()
def greedy_trace(model, prompt_ids: Sequence[int], max_new_tokens: int,
                 stop: Callable[[int], bool]) -> Iterator[Step]:
    """Decode greedily from `prompt_ids` (batch 1), yielding one `Step` per generated token.

    Args:
        model: a decoder-only HF model (Llama-style attention modules with `layer_idx`).
        prompt_ids: the prompt's token ids, at least one.
        max_new_tokens: the most tokens to generate.
        stop: `stop(token)`; decoding ends after the step whose token makes it true.
    """
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids is empty")
    num_layers = model_shape(model.config).num_layers
    ids = torch.tensor([list(prompt_ids)], device=model.device)
    cache = DynamicCache(config=model.config)
    with attention_implementation(model, TRACE_ATTENTION):
        if ids.shape[1] > 1:
            model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = ids[:, -1:]
        for _ in range(max_new_tokens):
            head_trace: list[torch.Tensor | None] = [None] * num_layers
            logits = model(input_ids=token, past_key_values=cache, use_cache=True, head_trace=head_trace).logits
            token = logits[:, -1].argmax(-1, keepdim=True)
            yield Step(int(token), torch.stack(head_trace))
            if stop(int(token)):
                return
