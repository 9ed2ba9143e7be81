"""SnapKV's kept token sets, read back from the cache, equal a direct computation from the definition."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from raggedkv.engine import Engine
from tests.engine_helpers import random_prompts, tiny_model

WINDOW, KV_SIZE, POOL = 8, 20, 7


def _post_rope_qk(model, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, (q `[Hq, n, D]`, k `[Hkv, n, D]`) after RoPE, recomputed from the layer inputs with plain torch."""
    input_ids = torch.tensor([ids])
    positions = torch.arange(len(ids))[None]
    with torch.no_grad():
        hidden = model(input_ids, output_hidden_states=True).hidden_states  # hidden[l] is layer l's input
        out = []
        for layer, block in enumerate(model.model.layers):
            x = block.input_layernorm(hidden[layer])
            attn = block.self_attn
            q = attn.q_proj(x).view(1, len(ids), -1, attn.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(1, len(ids), -1, attn.head_dim).transpose(1, 2)
            cos, sin = model.model.rotary_emb(x, positions)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            out.append((q[0], k[0]))
    return out


def _snapkv_definition(q: torch.Tensor, k: torch.Tensor) -> list[set[int]]:
    """SnapKV: window attention (causal, softmax over all keys) summed over the window, mean over each GQA group,
    max-pooled; each KV head keeps its top `KV_SIZE - WINDOW` prefix tokens (ties to the lower position) + window."""
    num_qo, n, dim = q.shape
    num_kv = k.shape[0]
    group = num_qo // num_kv
    logits = q[:, n - WINDOW :] @ k.repeat_interleave(group, 0).transpose(1, 2) / dim**0.5  # [Hq, w, n]
    causal = torch.arange(n)[None, :] > torch.arange(n - WINDOW, n)[:, None]
    attention = logits.masked_fill(causal, float("-inf")).softmax(-1)
    votes = attention[:, :, : n - WINDOW].sum(1).view(num_kv, group, -1).mean(1)
    pooled = F.max_pool1d(votes[:, None], POOL, stride=1, padding=POOL // 2)[:, 0]
    order = pooled.sort(dim=1, descending=True, stable=True).indices[:, : KV_SIZE - WINDOW]
    return [set(row.tolist()) | set(range(n - WINDOW, n)) for row in order]


def _kept_positions(segment_keys: torch.Tensor, keys: torch.Tensor) -> list[int]:
    """Positions of `keys` (`[n, D]`) that the cached rows (`[m, D]`) are copies of."""
    distance = torch.cdist(segment_keys.double(), keys.double())
    assert distance.min(dim=1).values.max() < 1e-4, "a cached row is not a prompt key"
    return distance.argmin(dim=1).tolist()


def test_snapkv_kept_tokens_match_the_definition():
    model = tiny_model(heads=6, kv_heads=2, layers=3, seed=10)
    (ids,) = random_prompts([57], seed=11)
    engine = Engine.from_model(model, method="snapkv", backend="torch")
    state = engine.prefill([ids], kv_size=KV_SIZE, max_new_tokens=1)
    for layer, (q, k) in enumerate(_post_rope_qk(model, ids)):
        expected = _snapkv_definition(q, k)
        cache = state.cache.layer(layer)
        for head in range(k.shape[0]):
            start, length = int(cache.kv_indptr[head]), int(cache.kv_lens[head])
            kept = _kept_positions(cache.k_cache[start : start + length], k[head])
            assert kept == sorted(kept), "kept tokens are stored in position order"
            assert set(kept) == expected[head], (layer, head)
    assert state.kept.tolist() == [[[KV_SIZE] * 2] * 3]
