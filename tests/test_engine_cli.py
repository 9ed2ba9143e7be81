"""`raggedkv generate` on a tiny local model folder, and the parser's structure."""

from __future__ import annotations

import json

import pytest

from raggedkv.engine import cli
from tests.engine_helpers import char_tokenizer, tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model(seed=30).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return str(folder)


def _generate(model_dir, *extra):
    return cli.main(["generate", "--model", model_dir, "--backend", "torch", "--max-new-tokens", "5", *extra])


def test_generate_json(model_dir, capsys):
    assert _generate(model_dir, "--method", "snapkv", "--kv-size", "8", "--prompt", "a longer prompt here.",
                     "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"text", "token_ids", "finish_reason", "stats"}
    stats = out["stats"]
    assert stats["method"] == "snapkv" and stats["kv_size"] == 8 and stats["compressed"] is True
    assert stats["prompt_tokens"] == 21 and stats["kept_tokens"] == [[8, 8], [8, 8]]
    assert stats["kv_fraction_kept"] == pytest.approx(8 / 21)


def test_generate_text_from_a_prompt_file(model_dir, tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("hello from a file", encoding="utf-8")
    assert _generate(model_dir, "--method", "full", "--prompt-file", str(prompt)) == 0
    lines = capsys.readouterr().out.splitlines()
    table = dict(line.split(None, 1) for line in lines if line.startswith(("prefill", "backend", "method")))
    assert table["backend"].strip() == "torch on cpu"
    assert table["method"].startswith("full, kv_size none (keep all), compression off")


def test_bad_arguments_exit_with_a_message(model_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _generate(model_dir, "--kv-size", "3", "--prompt", "hello there")
    assert exit_info.value.code == 2
    assert "kv_size must be an int >= 8 (the least method 'snapkv' keeps per head" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _generate(model_dir, "--prompt", "x", "--prompt-file", "y.txt")  # mutually exclusive
    with pytest.raises(SystemExit):
        _generate(model_dir, "--prompt-file", "does-not-exist.txt")
    assert "does not exist" in capsys.readouterr().err


def test_parser_lists_every_command_and_registers_only_the_chosen_ones():
    full = cli.build_parser()._subparsers._group_actions[0].choices
    assert list(full) == list(cli.COMMANDS)
    assert [name for name, parser in full.items() if parser.get_default("func") is None] == ["eval"]  # per task
    listed = cli.build_parser(load=["generate"])._subparsers._group_actions[0].choices
    assert list(listed) == list(cli.COMMANDS)
    assert listed["generate"].get_default("func") is not None and listed["eval"].get_default("func") is None
