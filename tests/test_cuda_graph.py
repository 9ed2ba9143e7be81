"""CUDA-graph decode: mode selection, the warm-up's state restoration, the eager fallback and its stats, the runner's
graph path with the capture replaced by a replaying stand-in (CPU), and
graph == eager tokens, seeded sampling under replay and replay across generations (GPU, skipped without CUDA;
`bench/run_all_gpu.sh` runs them)."""

from __future__ import annotations

import re

import pytest
import torch

from raggedkv.engine import Engine
from raggedkv.engine.backend import TORCH_BACKEND, get_backend
from raggedkv.engine.cuda_graph import EAGER, GRAPH, decode_mode, warm_up
from raggedkv.engine.hf import ATTENTION_NAME
from raggedkv.engine.methods import get_method
from raggedkv.engine.models import attention_implementation
from raggedkv.engine.outputs import format_stats
from raggedkv.engine.runner import ModelRunner, SamplingParams, Variant
from tests.engine_helpers import random_prompts, tiny_model

CUDA = torch.device("cuda")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def _model(device: torch.device, dtype: torch.dtype = torch.float32, seed: int = 31):
    model = tiny_model(layers=2, heads=4, kv_heads=2, head_dim=16, seed=seed).to(device=device, dtype=dtype)
    model.generation_config.eos_token_id = None  # every run decodes all its steps
    model.config.eos_token_id = None
    return model


@pytest.mark.parametrize(
    ("cuda_graph", "device", "backend", "expected"),
    [
        (True, "cuda", "triton", GRAPH),
        (False, "cuda", "triton", EAGER),
        (True, "cuda", "torch", EAGER),  # the references read lengths back: not capturable
        (True, "cpu", "triton", EAGER),  # the interpreter
        (True, "cpu", "torch", EAGER),
    ],
)
def test_decode_mode_is_graph_only_on_cuda_with_triton_when_asked(cuda_graph, device, backend, expected):
    assert decode_mode(cuda_graph, torch.device(device), backend) == expected


@torch.inference_mode()
def test_warm_up_leaves_the_cache_as_it_was_for_the_next_step():
    """Two warm-up steps append to every segment; restoring the lengths makes the next real step exactly the step
    a cache that was never warmed up takes (the rows the warm-up wrote are overwritten)."""
    model = _model(torch.device("cpu"))
    runner = ModelRunner(model, TORCH_BACKEND)
    prompts = random_prompts([19, 14], seed=32)
    variants = [Variant(p, get_method("snapkv"), 8) for p in range(2)]
    with attention_implementation(model, ATTENTION_NAME):
        warmed, plain = (runner.prefill(prompts, variants, max_new_tokens=4) for _ in range(2))
        first = warmed.logits.argmax(dim=-1)
        inputs = runner.step_inputs(warmed, first)
        lens = warmed.cache.kv_lens.clone()
        warm_up(lambda: runner.decode_step(warmed.hf_cache, inputs), warmed.cache.kv_lens)
        assert torch.equal(warmed.cache.kv_lens, lens)
        after_warm_up = runner.advance(warmed, inputs)
        expected = runner.advance(plain, runner.step_inputs(plain, first))
    assert torch.equal(after_warm_up, expected)
    assert torch.equal(warmed.cache.kv_lens, plain.cache.kv_lens)
    assert torch.equal(_valid_rows(warmed.cache), _valid_rows(plain.cache))
    assert not torch.equal(warmed.cache.kv, plain.cache.kv)  # the second warm-up row stays, past the valid ones


def _valid_rows(cache) -> torch.Tensor:
    """The K/V rows every segment holds now, concatenated `[2, rows, head_dim]`."""
    rows = []
    for layer in range(cache.num_layers):
        k, v, indptr, lens = cache.layer(layer)
        for start, length in zip(indptr[:-1].tolist(), lens.tolist()):
            rows.append(torch.stack([k[start : start + length], v[start : start + length]]))
    return torch.cat(rows, dim=1)


@torch.inference_mode()
def test_decode_and_teacher_force_on_one_state_share_its_step_buffers():
    model = _model(torch.device("cpu"))
    runner = ModelRunner(model, TORCH_BACKEND)
    prompts = random_prompts([17], seed=33)
    with attention_implementation(model, ATTENTION_NAME):
        state = runner.prefill(prompts, [Variant(0, get_method("snapkv"), 8)], max_new_tokens=8)
        first = state.logits.argmax(dim=-1)
        inputs = runner.step_inputs(state, first)
        runner.advance(state, inputs)
        forced_tokens = torch.randint(0, model.config.vocab_size, (1, 3))
        runner.teacher_force(state, forced_tokens)
    assert state.inputs is inputs and state.graph is None  # eager: nothing captured
    assert inputs.positions.flatten().tolist() == [17 + 3] and torch.equal(inputs.tokens, forced_tokens[:, -1:])


@torch.inference_mode()
def test_cpu_engine_falls_back_to_eager_and_says_so_in_the_stats():
    model = _model(torch.device("cpu"))
    prompts = random_prompts([21, 16], seed=34)
    results = {
        flag: Engine.from_model(model, method="snapkv", backend="torch", cuda_graph=flag).generate_ids(
            prompts, kv_size=8, max_new_tokens=5
        )
        for flag in (True, False)
    }
    for flag, batch in results.items():
        for result in batch:
            assert result.stats.decode_mode == EAGER and result.stats.graph_capture_seconds == 0.0, flag
            assert re.search(r"^decode mode +eager$", format_stats(result), re.MULTILINE)
    assert [r.token_ids for r in results[True]] == [r.token_ids for r in results[False]]


# ---- GPU: the captured step itself


def _engines(dtype: torch.dtype, method: str = "snapkv") -> tuple[Engine, Engine]:
    model = _model(CUDA, dtype)
    return tuple(Engine.from_model(model, method=method, backend="triton", cuda_graph=flag) for flag in (True, False))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["snapkv", "full"])
@torch.inference_mode()
def test_graph_and_eager_give_the_same_greedy_tokens(dtype, method):
    graph, eager = _engines(dtype, method)
    prompts = random_prompts([45, 30, 38], seed=35)
    kv_size = None if method == "full" else 12
    with_graph = graph.generate_ids(prompts, kv_size=kv_size, max_new_tokens=24)
    without = eager.generate_ids(prompts, kv_size=kv_size, max_new_tokens=24)
    assert [r.token_ids for r in with_graph] == [r.token_ids for r in without]
    assert {r.stats.decode_mode for r in with_graph} == {GRAPH} and {r.stats.decode_mode for r in without} == {EAGER}
    assert all(r.stats.graph_capture_seconds > 0 for r in with_graph)
    assert all(len(r.token_ids) == 24 for r in with_graph)


@needs_cuda
@torch.inference_mode()
def test_seeded_sampling_is_reproducible_under_replay():
    graph, _ = _engines(torch.bfloat16)
    prompts = random_prompts([40, 33], seed=36)
    runs = [graph.generate_ids(prompts, kv_size=12, max_new_tokens=20, temperature=1.0, top_p=0.9, seed=seed)
            for seed in (7, 7, 8)]
    tokens = [[r.token_ids for r in run] for run in runs]
    assert tokens[0] == tokens[1]
    assert tokens[0] != tokens[2]  # the seed matters: 2 x 19 draws over 96 tokens do not all repeat


@needs_cuda
@torch.inference_mode()
def test_replay_across_two_generations_of_one_engine():
    """Each generation captures its own graph (its own cache); the second must not replay the first's."""
    graph, eager = _engines(torch.bfloat16)
    first_prompts, second_prompts = random_prompts([50, 27], seed=37), random_prompts([23, 61, 34], seed=38)
    for prompts in (first_prompts, second_prompts, first_prompts):
        with_graph = graph.generate_ids(prompts, kv_size=10, max_new_tokens=12)
        without = eager.generate_ids(prompts, kv_size=10, max_new_tokens=12)
        assert [r.token_ids for r in with_graph] == [r.token_ids for r in without]


@needs_cuda
@torch.inference_mode()
def test_teacher_force_replays_the_same_step_as_eager():
    model = _model(CUDA, torch.bfloat16)
    runners = [ModelRunner(model, get_backend("triton", CUDA), cuda_graph=flag) for flag in (True, False)]
    prompts = random_prompts([44, 29], seed=39)
    variants = [Variant(p, get_method("snapkv"), 12) for p in range(2)]
    forced = torch.randint(0, model.config.vocab_size, (2, 6), device=CUDA)
    logits = []
    with attention_implementation(model, ATTENTION_NAME):
        for runner in runners:
            state = runner.prefill(prompts, variants, max_new_tokens=8)
            logits.append(runner.teacher_force(state, forced))
            assert (state.graph is not None) == (runner.mode == GRAPH)
    assert runners[0].mode == GRAPH
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)


class _ReplayingGraph:
    """Stands in for a captured step on the CPU: warm-up as `DecodeGraph.capture` does it, then every replay calls
    the step again (what a replay does, on the buffers the step read at capture)."""

    captures = 0

    def __init__(self, step, inputs) -> None:
        self.step, self.inputs, self.capture_seconds = step, inputs, 0.25

    @classmethod
    def capture(cls, step, inputs, kv_lens):
        cls.captures += 1
        warm_up(step, kv_lens)
        return cls(step, inputs)

    def replay(self) -> torch.Tensor:
        return self.step()


@torch.inference_mode()
def test_graph_mode_plumbing_captures_once_per_generation_and_matches_eager(monkeypatch):
    """The runner's graph path on the CPU, with the capture replaced by a replaying stand-in: one capture per
    generation (decode and a later teacher_force on the same state share it), tokens and logits as eager."""
    monkeypatch.setattr("raggedkv.engine.runner.DecodeGraph", _ReplayingGraph)
    monkeypatch.setattr(_ReplayingGraph, "captures", 0)
    model = _model(torch.device("cpu"))
    graph, eager = (ModelRunner(model, TORCH_BACKEND) for _ in range(2))
    graph.mode = GRAPH  # what decode_mode picks on CUDA with Triton
    prompts = random_prompts([26, 18], seed=40)
    variants = [Variant(p, get_method("snapkv"), 10) for p in range(2)]
    sampling = SamplingParams(max_new_tokens=7)
    runs = {}
    for name, runner in (("graph", graph), ("eager", eager)):
        with attention_implementation(model, ATTENTION_NAME):
            state = runner.prefill(prompts, variants, max_new_tokens=9)  # headroom for 6 + 2 steps
            decoded = runner.decode(state, state.logits.argmax(dim=-1), sampling, None)
            forced = runner.teacher_force(state, decoded.tokens[:, 1:3])  # 2 more steps on the same state
        runs[name] = (state, decoded, forced)
    (state, decoded, forced), (_, expected, expected_forced) = runs["graph"], runs["eager"]
    assert _ReplayingGraph.captures == 1 and state.graph.inputs is state.inputs
    assert decoded.mode == GRAPH and decoded.capture_seconds == 0.25 and expected.mode == EAGER
    assert torch.equal(decoded.tokens, expected.tokens) and decoded.steps == 6
    assert torch.equal(forced, expected_forced)
    graph.run(prompts, variants, sampling)
    assert _ReplayingGraph.captures == 2  # a new generation, a new cache: captured again


@torch.inference_mode()
def test_a_failed_capture_says_how_to_decode_eagerly(monkeypatch):
    def refuse(step, inputs, kv_lens):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr("raggedkv.engine.runner.DecodeGraph.capture", refuse)
    model = _model(torch.device("cpu"))
    runner = ModelRunner(model, TORCH_BACKEND)
    runner.mode = GRAPH
    with pytest.raises(RuntimeError, match=r"stream is capturing\); pass cuda_graph=False .*--no-cuda-graph"):
        runner.run(random_prompts([15], seed=44), [Variant(0, get_method("snapkv"), 8)], SamplingParams(3))
