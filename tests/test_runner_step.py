"""The runner's decode step: static input buffers, no host-side state change, no device read, headroom guard."""

from __future__ import annotations

import copy

import pytest
import torch

from raggedkv.engine.backend import TORCH_BACKEND, get_backend
from raggedkv.engine.hf import ATTENTION_NAME
from raggedkv.engine.methods import get_method
from raggedkv.engine.models import attention_implementation
from raggedkv.engine.runner import ModelRunner, SamplingParams, StepInputs, Variant
from tests.engine_helpers import random_prompts, tiny_model
from tests.ragged_cases import forbid_host_sync

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DEVICE_STATE = ("kv", "kv_indptr", "kv_lens")  # the cache's device tensors: a step writes into them in place


def _model():
    model = tiny_model(layers=2, heads=4, kv_heads=2, head_dim=16, seed=21).to(DEVICE)
    model.generation_config.eos_token_id = None  # decode every step
    model.config.eos_token_id = None
    return model


def _variants(count: int) -> list[Variant]:
    return [Variant(prompt, get_method("snapkv"), 10) for prompt in range(count)]


def _host_state(cache) -> dict:
    """Every attribute of the cache except the contents of its device tensors (for those: their address)."""
    state = {}
    for name, value in vars(cache).items():
        if name in DEVICE_STATE:
            state[name] = (value.data_ptr(), value.shape)
        elif name == "backend":
            state[name] = id(value)
        else:
            state[name] = copy.deepcopy(value)
    return state


def _assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for name, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, after[name]), name
        else:
            assert value == after[name], name


def _record_inputs(model, calls: list):
    """Record each forward's input buffers: (input_ids address, position_ids address, positions copy)."""

    def hook(module, args, kwargs):
        ids, positions = kwargs["input_ids"], kwargs["position_ids"]
        calls.append((ids.data_ptr(), positions.data_ptr(), positions.clone()))

    return model.register_forward_pre_hook(hook, with_kwargs=True)


@torch.inference_mode()
def test_triton_step_reads_static_buffers_and_changes_no_host_state_without_host_sync():
    model = _model()
    runner = ModelRunner(model, get_backend("triton", DEVICE))
    prompts = random_prompts([17, 12], seed=22)
    with attention_implementation(model, ATTENTION_NAME):
        state = runner.prefill(prompts, _variants(2), max_new_tokens=4)
        positions = torch.tensor(state.prompt_lens, device=DEVICE)[:, None]
        inputs = StepInputs(state.logits.argmax(dim=-1)[:, None], positions)
        lens_before = state.cache.kv_lens.clone()
        host_before = _host_state(state.cache)
        plans_before = copy.deepcopy(state.hf_cache.decode_plans)
        calls = []
        handle = _record_inputs(model, calls)
        try:
            with forbid_host_sync():
                first = runner.decode_step(state.hf_cache, inputs)
                inputs.tokens.copy_(first.argmax(dim=-1, keepdim=True))
                inputs.positions.add_(1)
                second = runner.decode_step(state.hf_cache, inputs)
        finally:
            handle.remove()
    _assert_same(host_before, _host_state(state.cache))
    assert state.hf_cache.prefill_hook is None and state.hf_cache.decode_plans == plans_before
    assert [call[:2] for call in calls] == [(inputs.tokens.data_ptr(), inputs.positions.data_ptr())] * 2
    assert [call[2].flatten().tolist() for call in calls] == [[17, 12], [18, 13]]
    assert torch.equal(state.cache.kv_lens, lens_before + 2)  # both steps appended on the device
    assert first.shape == second.shape == (2, model.config.vocab_size)
    assert torch.isfinite(second).all() and not torch.equal(first, second)


@torch.inference_mode()
def test_decode_loop_feeds_every_step_the_same_buffers_and_counts_steps():
    model = _model()
    runner = ModelRunner(model, TORCH_BACKEND)
    prompts = random_prompts([15, 9], seed=23)
    calls = []
    handle = _record_inputs(model, calls)
    try:
        state, decoded = runner.run(prompts, _variants(2), SamplingParams(max_new_tokens=5))
    finally:
        handle.remove()
    steps = [call for call in calls if call[2].shape == (2, 1)]  # the prefills run one prompt each
    assert decoded.steps == len(steps) == 4 and len(calls) == 4 + len(prompts)
    assert len({call[:2] for call in steps}) == 1  # one token buffer and one position buffer for every step
    assert [call[2].flatten().tolist() for call in steps] == [[15 + i, 9 + i] for i in range(4)]
    assert state.cache.decode_steps == 4 == state.cache.headroom


@torch.inference_mode()
def test_decode_loop_refuses_a_step_past_the_headroom_before_running_it():
    model = _model()
    runner = ModelRunner(model, TORCH_BACKEND)
    with attention_implementation(model, ATTENTION_NAME):
        state = runner.prefill(random_prompts([11], seed=24), _variants(1), max_new_tokens=3)  # headroom 2
        first = state.logits.argmax(dim=-1)
        lens_before = state.cache.kv_lens.clone()
        with pytest.raises(RuntimeError, match=r"decode step 3: all 2 rows of decode headroom are used"):
            runner.decode(state, first, SamplingParams(max_new_tokens=5), None)
    assert state.cache.decode_steps == 2
    assert torch.equal(state.cache.kv_lens, lens_before + 2)  # the refused third step appended nothing


@torch.inference_mode()
def test_teacher_force_matches_a_full_forward_and_the_greedy_loop():
    """Full cache: teacher-forced logits equal one transformers forward over prompt + continuation. Compressed:
    feeding the greedy loop's own tokens back gives logits whose argmax is the loop's next token."""
    model = _model()
    runner = ModelRunner(model, TORCH_BACKEND)
    (prompt,) = random_prompts([23], seed=24)
    continuation = torch.randint(0, model.config.vocab_size, (1, 5))
    with attention_implementation(model, ATTENTION_NAME):
        state = runner.prefill([prompt], [Variant(0, get_method("full"), None)], max_new_tokens=6)
        forced = runner.teacher_force(state, continuation)
    expected = model(torch.tensor([prompt + continuation[0].tolist()])).logits[0, len(prompt) :].float()
    assert forced.shape == (1, 5, model.config.vocab_size)
    torch.testing.assert_close(forced[0], expected, rtol=1e-4, atol=1e-4)

    variants = _variants(2)
    prompts = random_prompts([31, 26], seed=25)
    state, decoded = runner.run(prompts, variants, SamplingParams(max_new_tokens=5))
    with attention_implementation(model, ATTENTION_NAME):
        again = runner.prefill(prompts, variants, max_new_tokens=5)
        forced = runner.teacher_force(again, decoded.tokens[:, :-1])
    assert torch.equal(forced.argmax(dim=-1), decoded.tokens[:, 1:])
    with attention_implementation(model, ATTENTION_NAME), pytest.raises(RuntimeError, match="headroom"):
        runner.teacher_force(again, decoded.tokens[:, :1])
