"""The dry run's rows at real shapes: every method's budgets planned, without weights, with the score files the bench
gives it there."""

from __future__ import annotations

from typing import Any

import torch

from bench.e2e.fill import HF_PROVIDERS
from bench.harness.scores import method_scores
from bench.harness.shapes import attention_shape
from raggedkv.engine.compress import plan_budgets
from raggedkv.engine.methods import get_method
from raggedkv.engine.methods.base import ModelShape

def full_cache_bytes(shape: ModelShape, tokens: int, dtype: torch.dtype) -> int:
    """Bytes of K and V for `tokens` tokens in every KV head of every layer."""
    return 2 * shape.num_layers * shape.num_kv_heads * tokens * shape.head_dim * dtype.itemsize


def plan_only(config: dict[str, Any], provider: str) -> dict[str, Any]:
    """A dry-run row at a real shape: the method built with the score files the bench gives it there, one prompt's
    budgets planned and checked (no weights, no generation); `kv_bytes` = bf16 K and V those budgets keep."""
    shape = attention_shape(config["model"])
    kv_bytes_per_token = full_cache_bytes(shape, 1, torch.bfloat16) // (shape.num_layers * shape.num_kv_heads)
    if provider in HF_PROVIDERS:
        return {"check": "ok", "kv_bytes": full_cache_bytes(shape, config["prompt"], torch.bfloat16), "scores": "-",
                "score_files": None}
    try:
        scores = method_scores(config["model"], provider)
        budgets = plan_budgets(get_method(provider, **scores.params), shape, config["prompt"], config["kv_size"])
    except Exception as exc:  # noqa: BLE001 - the row says what failed; the other methods still run
        return {"check": "error", "error": f"{type(exc).__name__}: {exc}"}
    kept = int(budgets.sum())
    wanted = (config["prompt"] if provider == "full" else config["kv_size"]) * shape.num_layers * shape.num_kv_heads
    row = {"check": "ok" if kept == wanted else "fail", "kv_bytes": kept * kv_bytes_per_token,
           "scores": scores.label, "score_files": scores.describe()}
    if kept != wanted:
        row["error"] = f"the budgets keep {kept} tokens, not {wanted}"
    return row
