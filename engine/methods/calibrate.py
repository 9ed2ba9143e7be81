"""`raggedkv calibrate-layers`: CompressKV's layer scores from the eviction error of each layer's attention output.

As published (CompressKV `pred_get_importance_score.py`, METHODS.md 4.3): each prompt is prefilled with full
attention; every layer picks the `budget` tokens (window included) CompressKV would keep, but generation goes on
with the **full** cache. At every decode step each layer's attention output is computed twice, over the full cache
(`O`) and over the kept tokens plus all generated ones (`O'`), both through `o_proj`, and
`||O' - O||_F / (||O||_F + 1e-5)` is added to the layer's error. Per prompt set the errors are summed over steps
and prompts and L1-normalised across layers; the sets' vectors are averaged and L1-normalised again into
`avg_score` (more error earns more budget).

The hook is a transformers `AttentionInterface` function: it returns the ordinary SDPA output (generation is
unchanged) and records the errors on the side, into the `_ErrorRecorder` each forward passes as the
`calibration_recorder` keyword (transformers forwards extra model keywords to every attention call, as the engine
does with its ragged cache).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from raggedkv.kernels.reference import window_scores_ref
from tqdm.auto import tqdm
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ..models import attention_implementation, eos_token_ids, model_shape
from .compresskv import retrieval_head_weights
from .head_scores import ScoreSource, load_head_scores

IMPLEMENTATION = "raggedkv_calibrate"


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """fp32 attention of `[Hq, q, d]` queries over `[Hkv, N, d]` keys/values (all visible): `[Hq, q, d]`."""
    group = query.shape[0] // key.shape[0]
    keys = key.float().repeat_interleave(group, dim=0)
    values = value.float().repeat_interleave(group, dim=0)
    probs = torch.softmax(query.float() @ keys.transpose(1, 2) * scale, dim=-1)
    return probs @ values


class _ErrorRecorder:
    """Per-layer kept-token masks (set at prefill) and summed relative output errors (at decode) of one prompt."""

    def __init__(self, weights: torch.Tensor, budget: int, window: int, pool_size: int) -> None:
        self.weights = weights
        self.budget = budget
        self.window = window
        self.pool_size = pool_size
        self.keep: dict[int, torch.Tensor] = {}
        self.errors = torch.zeros(weights.shape[0], dtype=torch.float64)

    def observe(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                scale: float) -> None:
        layer = module.layer_idx
        if layer not in self.keep:
            self.keep[layer] = self._select(layer, query[0], key[0], scale)
            return
        kept = self.keep[layer]
        mask = torch.cat([kept, torch.ones(key.shape[2] - kept.numel(), dtype=torch.bool, device=kept.device)])
        full = _attend(query[0], key[0], value[0], scale)
        part = _attend(query[0], key[0][:, mask], value[0][:, mask], scale)
        project = module.o_proj
        dtype = project.weight.dtype
        out_full = project(full.transpose(0, 1).reshape(1, -1).to(dtype)).float()
        out_part = project(part.transpose(0, 1).reshape(1, -1).to(dtype)).float()
        self.errors[layer] += (torch.linalg.norm(out_part - out_full) / (torch.linalg.norm(out_full) + 1e-5)).item()

    def _select(self, layer: int, query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
        """CompressKV's kept set at prefill: top `budget - window` shared scores plus the window (bool `[n]`)."""
        n = key.shape[1]
        keep = torch.ones(n, dtype=torch.bool, device=key.device)
        if n <= self.budget:
            return keep
        scores = window_scores_ref(
            query[:, -self.window:], key, window_reduce="sum", group_reduce="sum", pool="avg",
            pool_size=self.pool_size, qo_head_weights=self.weights[layer].to(key.device), sm_scale=scale,
        ).sum(dim=0)
        keep[: n - self.window] = False
        keep[torch.sort(scores, descending=True, stable=True).indices[: self.budget - self.window]] = True
        return keep


def _attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, scaling: float | None = None,
               calibration_recorder: _ErrorRecorder | None = None, **kwargs: Any):
    """SDPA attention that also feeds `calibration_recorder` (the keyword `prompt_errors` passes to the model)."""
    output = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    if calibration_recorder is not None:
        scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
        calibration_recorder.observe(module, query, key, value, scale)
    return output


AttentionInterface.register(IMPLEMENTATION, _attention)


@torch.inference_mode()
def prompt_errors(model: torch.nn.Module, input_ids: torch.Tensor, weights: torch.Tensor, budget: int,
                  max_new_tokens: int, window: int = 8, pool_size: int = 5) -> torch.Tensor:
    """Summed relative attention-output error per layer for one prompt `[1, n]`, greedy decoding: fp64 `[L]`.

    Decoding stops after `max_new_tokens` tokens or at an end-of-sequence token; the first token comes from the
    prefill, so there are at most `max_new_tokens - 1` decode steps.
    """
    recorder = _ErrorRecorder(weights, budget, window, pool_size)
    eos = eos_token_ids(model)
    with attention_implementation(model, IMPLEMENTATION):
        out = model(input_ids=input_ids, use_cache=True, calibration_recorder=recorder)
        for _ in range(max_new_tokens - 1):
            token = out.logits[:, -1:].argmax(dim=-1)
            if int(token) in eos:
                break
            out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True,
                        calibration_recorder=recorder)
    return recorder.errors


def _normalise(errors: torch.Tensor, what: str) -> torch.Tensor:
    total = errors.sum()
    if total <= 0:
        raise ValueError(f"{what}: no eviction error at all (every prompt has at most `budget` tokens?)")
    return errors / total


def calibrate_layers(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str] | Mapping[str, Sequence[str]],
                     budget: int = 32, max_new_tokens: int = 32, progress: bool = True,
                     head_scores: ScoreSource | None = None, first_k: int = 4, window: int = 8,
                     pool_size: int = 5) -> dict[str, Any]:
    """CompressKV layer scores for `model` from its attention-output error at `budget` tokens per head.

    Args:
        model: a transformers causal LM whose attention modules have `layer_idx` and `o_proj` (Llama, Mistral,
            Qwen2, ...), batch 1.
        tokenizer: called as `tokenizer(text, return_tensors="pt")["input_ids"]`; prompts are used verbatim
            (apply any chat template beforehand).
        prompts: one prompt set (a list of strings) or named sets (`{"set name": [prompts]}`, like the published
            per-dataset normalisation).
        budget: tokens kept per head at prefill, window included (published: 32).
        max_new_tokens: greedy tokens generated per prompt.
        progress: show a tqdm bar over prompts.
        head_scores: semantic-retrieval head scores ("layer-head" JSON path or dict); the layer's top `first_k`
            query heads score, as in CompressKV. None: all query heads score equally (not published).
        window, pool_size: CompressKV's scoring (window sum, avg-pool).

    Returns:
        `{"<set name>": [L floats], ..., "avg_score": [L floats, summing to 1], "meta": {...}}`, the published
        layer-score format (`CompressKV(layer_scores=...)` reads `avg_score`). A plain list is the set "prompts".
    """
    if budget < window:
        raise ValueError(f"budget={budget!r} must be >= window={window!r}")
    if max_new_tokens < 2:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be >= 2 (errors are measured at decode steps)")
    sets = dict(prompts) if isinstance(prompts, Mapping) else {"prompts": list(prompts)}
    if not sets or not all(sets.values()):
        raise ValueError("prompts: need at least one prompt in every set")
    if {"avg_score", "meta"} & set(sets):
        raise ValueError("prompts: 'avg_score' and 'meta' are reserved and cannot name a prompt set")
    shape = model_shape(model.config)
    if head_scores is None:
        weights = torch.full((shape.num_layers, shape.num_qo_heads), 1.0 / shape.num_qo_heads)
    else:
        weights = retrieval_head_weights(load_head_scores(head_scores, shape), first_k)
    device = next(model.parameters()).device
    result: dict[str, Any] = {}
    with tqdm(total=sum(len(p) for p in sets.values()), desc="calibrate-layers", disable=not progress) as bar:
        for name, texts in sets.items():
            errors = torch.zeros(shape.num_layers, dtype=torch.float64)
            for text in texts:
                input_ids = tokenizer(text, return_tensors="pt")["input_ids"].to(device)
                if input_ids.numel() == 0:
                    raise ValueError(f"prompt set {name!r} has an empty prompt")
                errors += prompt_errors(model, input_ids, weights, budget, max_new_tokens, window, pool_size)
                bar.update(1)
            result[name] = _normalise(errors, f"prompt set {name!r}").tolist()
    average = torch.tensor([result[name] for name in sets], dtype=torch.float64).mean(dim=0)
    result["avg_score"] = _normalise(average, "all prompt sets").tolist()
    result["meta"] = {"model": getattr(model, "name_or_path", None), "budget": budget,
                      "max_new_tokens": max_new_tokens, "window": window, "pool_size": pool_size,
                      "first_k": first_k if head_scores is not None else None,
                      "prompts": {name: len(texts) for name, texts in sets.items()}}
    return result
