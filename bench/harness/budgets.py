"""Per-(sequence, KV head) token budgets of one layer for the kernel benches, planned by the engine's own methods.

`uniform`: SnapKV's plan, every head keeps `kv_size`. `skew`: HeadKV-R's plan from synthetic head importance drawn
per sequence from a Dirichlet(alpha) over the KV heads (alpha 0.1: a few heads hold most of the budget, as HeadKV's
and Ada-KV's budgets do). Both keep `min(kv_size, prompt)` tokens per head on average (equal totals make them
comparable), at least the observation window per head and at most the prompt, window included.
"""

from __future__ import annotations

import numpy as np

from .shapes import attention_shape

BUDGET_DISTS = ("uniform", "skew")


def head_budgets(model: str, batch: int, prompt: int, kv_size: int, dist: str, *, window: int, seed: int = 0,
                 alpha: float = 0.1) -> list[int]:
    """`batch * num_kv_heads` budgets (sequence-major) of one layer of the named model shape, window included.

    `dist` is one of BUDGET_DISTS; `skew` draws sequence `b`'s importance as the `b`-th draw of a generator
    seeded with `seed`, so the budgets are deterministic.
    """
    from raggedkv.engine.compress import plan_budgets  # imported here: see `shapes.attention_shape`
    from raggedkv.engine.methods import get_method
    from raggedkv.engine.methods.base import ModelShape

    if dist not in BUDGET_DISTS:
        raise ValueError(f"dist={dist!r} is not supported; choose one of {BUDGET_DISTS}")
    full = attention_shape(model)
    layer = ModelShape(1, full.num_qo_heads, full.num_kv_heads, full.head_dim)
    if dist == "uniform":
        budgets = plan_budgets(get_method("snapkv", window=window), layer, prompt, kv_size)
        return budgets.flatten().tolist() * batch
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for _ in range(batch):
        kv_share = rng.dirichlet([alpha] * layer.num_kv_heads)
        scores = {f"0-{head}": [float(kv_share[head // layer.group_size]) / layer.group_size]
                  for head in range(layer.num_qo_heads)}
        method = get_method("headkv-r", head_scores=scores, window=window)
        out.extend(plan_budgets(method, layer, prompt, kv_size).flatten().tolist())
    return out
