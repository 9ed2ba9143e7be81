"""The decode step's kernel launches, and the Triton backend (under the interpreter on CPU) against torch."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from raggedkv.engine import Engine
from raggedkv.engine.backend import TORCH_BACKEND, get_backend
from tests.engine_helpers import random_prompts, tiny_model

KERNELS = ("window_scores", "select_and_pack", "append_kv", "ragged_decode_attention")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _counting(backend, counts: Counter):
    def wrap(name):
        fn = getattr(backend, name)

        def counted(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)

        return counted

    return dataclasses.replace(backend, **{name: wrap(name) for name in KERNELS})


@pytest.mark.parametrize(
    ("batch", "heads", "kv_heads"), [(1, 4, 2), (3, 8, 4)], ids=["batch1-2kv", "batch3-4kv"]
)
def test_decode_step_launches_two_kernels_per_layer(batch, heads, kv_heads):
    layers = 3
    counts = Counter()
    model = tiny_model(layers=layers, heads=heads, kv_heads=kv_heads, seed=12)
    model.generation_config.eos_token_id = None  # decode all max_new_tokens steps
    model.config.eos_token_id = None
    engine = Engine.from_model(model, method="snapkv", backend=_counting(TORCH_BACKEND, counts))
    result = engine.generate_ids(random_prompts([30, 25, 40][:batch], seed=13), kv_size=16, max_new_tokens=6)
    steps = result[0].stats.decode_steps
    assert steps == 5
    # Prefill: one scoring and one pack per (layer, sequence), never per head.
    assert counts["window_scores"] == counts["select_and_pack"] == layers * batch
    # Decode: exactly one append and one attention per layer per step, whatever the batch and head counts.
    assert counts["append_kv"] == counts["ragged_decode_attention"] == layers * steps


def test_auto_backend_is_torch_on_cpu_and_stats_say_so():
    model = tiny_model(seed=14)
    engine = Engine.from_model(model, method="full")
    assert engine.backend.name == "torch"
    result = engine.generate_ids(random_prompts([10], seed=15), max_new_tokens=2)[0]
    assert result.stats.backend == "torch" and result.stats.device == "cpu"


def _triton_backend():
    """The Triton backend for DEVICE (conftest sets the interpreter on a CPU-only machine)."""
    return get_backend("triton", DEVICE)


def test_triton_decode_plan_is_sized_from_capacities():
    backend = _triton_backend()
    capacities = torch.tensor([10, 300, 1000])
    plan = backend.plan_decode(capacities, DEVICE)
    chunk = plan["chunk_size"]
    assert chunk >= 256 and chunk & (chunk - 1) == 0
    assert plan["max_chunks"] * chunk >= 1000 > (plan["max_chunks"] - 1) * chunk


@pytest.mark.parametrize("method", ["full", "snapkv"])
def test_triton_backend_matches_torch_backend(method):
    _triton_backend()
    model = tiny_model(layers=2, heads=4, kv_heads=2, head_dim=16, seed=16).to(DEVICE)
    prompts = random_prompts([21, 13], seed=17)
    torch_out = Engine.from_model(model, method=method, backend="torch").generate_ids(
        prompts, kv_size=10, max_new_tokens=4)
    triton_out = Engine.from_model(model, method=method, backend="triton").generate_ids(
        prompts, kv_size=10, max_new_tokens=4)
    assert [r.token_ids for r in triton_out] == [r.token_ids for r in torch_out]
    assert [r.stats.kept_tokens for r in triton_out] == [r.stats.kept_tokens for r in torch_out]
    assert triton_out[0].stats.backend == "triton"
