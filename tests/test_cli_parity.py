"""`raggedkv generate`, `sweep` and `eval` against the API: the same defaults, the flags giving the API's tokens, CLI
errors, and `raggedkv --help` and every command's `--help` loading neither torch nor transformers."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
import torch

from raggedkv.engine import Engine, cli
from tests.engine_helpers import char_tokenizer, tiny_model

CHAT_TEMPLATE = "{% for message in messages %}[{{ message['content'] }}]{% endfor %}"
PROMPT = "the quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama-chat")
    tiny_model(seed=31).save_pretrained(folder)
    tokenizer = char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return str(folder)


def generate_defaults() -> dict:
    parser = cli.build_parser(load=["generate"])
    return vars(parser.parse_args(["generate", "--prompt", "x"]))


def api_default(function, name: str) -> object:
    return inspect.signature(function).parameters[name].default


def test_generate_defaults_are_the_apis():
    cli_defaults = generate_defaults()
    for name in ("kv_size", "max_new_tokens", "temperature", "top_p", "seed", "chat_template"):
        assert cli_defaults[name] == api_default(Engine.generate, name), name
    for name in ("model", "method", "head_scores", "device", "dtype", "backend", "cuda_graph", "tp_plan",
                 "rank_balance"):
        assert cli_defaults[name] == api_default(Engine.from_pretrained, name), name


def test_sweep_defaults_are_the_apis():
    parser = cli.build_parser(load=["sweep"])
    cli_defaults = vars(parser.parse_args(["sweep", "--prompt", "x", "--methods", "snapkv", "--kv-sizes", "8"]))
    for name in ("max_new_tokens", "temperature", "top_p", "seed", "chat_template"):
        assert cli_defaults[name] == api_default(Engine.sweep, name), name
    for name in ("model", "head_scores", "device", "dtype", "backend", "cuda_graph", "tp_plan", "rank_balance"):
        assert cli_defaults[name] == api_default(Engine.from_pretrained, name), name


EVAL_TASKS = {  # eval subcommand -> (its API function, the extra flags it requires)
    "niah": ("run_niah", []),
    "reasoning": ("run_reasoning", []),
    "longbench": ("run_longbench", ["--data-dir", "x"]),
}


@pytest.mark.parametrize("task", EVAL_TASKS)
def test_eval_defaults_are_the_apis(task):
    from raggedkv.engine import eval as evaluation
    from raggedkv.engine.eval import commands

    function_name, required = EVAL_TASKS[task]
    args = cli.build_parser(load=["eval"]).parse_args(["eval", task, *required])
    kwargs = commands._shared_kwargs(args, task) if task == "longbench" else commands._needle_kwargs(args, task)
    signature = inspect.signature(getattr(evaluation, function_name)).parameters
    compared = set(kwargs) - {"out", "head_scores", "data_dir"}  # out: a path either way; head_scores: {} vs None
    assert compared and compared <= set(signature)
    for name in sorted(compared):
        default = signature[name].default
        expected = list(default) if isinstance(default, tuple) else default
        assert kwargs[name] == expected, name
    assert not kwargs["head_scores"] and signature["head_scores"].default is None


def test_the_command_table_matches_what_the_modules_register():
    parser = cli.build_parser()
    helps = {action.dest: action.help for action in parser._subparsers._group_actions[0]._choices_actions}
    assert helps == {name: help_text for name, (_, help_text) in cli.COMMANDS.items()}


HELP_ARGVS = [["--help"], *([name, "--help"] for name in cli.COMMANDS),
              *(["eval", benchmark, "--help"] for benchmark in ("niah", "reasoning", "longbench"))]


@pytest.mark.parametrize("argv", HELP_ARGVS, ids=" ".join)
def test_help_loads_neither_torch_nor_transformers(argv):
    script = ("import sys\nfrom raggedkv.engine import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n"
              "    pass\nprint(sorted({'torch', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, check=True).stdout
    assert "usage: raggedkv" in out and out.strip().endswith("[]")


def run_json(model_dir, capsys, *flags) -> dict:
    argv = ["generate", "--model", model_dir, "--backend", "torch", "--max-new-tokens", "6", "--prompt", PROMPT,
            "--json", *flags]
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)


def api_tokens(model_dir, method="snapkv", head_scores=None, generate_kwargs=None, **params) -> list[int]:
    engine = Engine.from_pretrained(model_dir, method=method, head_scores=head_scores, backend="torch", **params)
    return engine.generate(PROMPT, max_new_tokens=6, **(generate_kwargs or {})).token_ids


def test_method_parameters_reach_the_method(model_dir, capsys):
    out = run_json(model_dir, capsys, "--method", "pyramidkv", "--kv-size", "12", "--param", "window=4",
                   "--param", "pool=avg")
    assert out["stats"]["method"] == "pyramidkv:pool=avg,window=4"  # results name the full variant
    assert out["token_ids"] == api_tokens(model_dir, "pyramidkv", generate_kwargs={"kv_size": 12}, window=4,
                                          pool="avg")


def test_head_score_file_reaches_headkv(model_dir, tmp_path, capsys):
    scores = {f"{layer}-{head}": torch.rand(3).tolist() for layer in range(2) for head in range(4)}
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(scores), encoding="utf-8")
    out = run_json(model_dir, capsys, "--method", "headkv-r", "--kv-size", "10", "--head-scores", str(path),
                   "--param", "beta=2", "--param", "faithful=true")
    assert out["token_ids"] == api_tokens(model_dir, "headkv-r", head_scores=str(path),
                                          generate_kwargs={"kv_size": 10}, beta=2.0, faithful=True)


def test_sampling_flags_and_chat_template_switch(model_dir, capsys):
    sampled = run_json(model_dir, capsys, "--temperature", "1.5", "--top-p", "0.9", "--seed", "7")
    assert sampled["token_ids"] == api_tokens(model_dir, generate_kwargs={"temperature": 1.5, "top_p": 0.9,
                                                                         "seed": 7})
    chat = run_json(model_dir, capsys)
    plain = run_json(model_dir, capsys, "--no-chat-template")
    assert chat["stats"]["prompt_tokens"] == plain["stats"]["prompt_tokens"] + 2  # the template's "[" and "]"
    assert plain["token_ids"] == api_tokens(model_dir, generate_kwargs={"chat_template": False})


def test_threads_sets_torch_threads(model_dir, capsys):
    before = torch.get_num_threads()
    try:
        run_json(model_dir, capsys, "--threads", "1")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("flags", "message"), [
    (["--param", "window=abc"], "--param window=abc: window must be an int"),
    (["--param", "beta=2"], "method 'snapkv' has no parameter 'beta'; its parameters are ["),
    (["--param", "window=4", "--param", "window=6"], "--param window is given twice"),
    (["--method", "headkv-r", "--param", "head_scores=x.json"], "score files go in --head-scores/--layer-scores"),
    (["--method", "headkv-r", "--param", "faithful=maybe"], "faithful must be one of ['true'"),
    (["--layer-scores", "layers.json"], "--layer-scores 'layers.json': method 'snapkv' reads no such file; "
                                        "['compresskv'] do"),
    (["--method", "nope"], "--method 'nope' is unknown"),
    (["--threads", "0"], "--threads: must be an int >= 1, got '0'"),
    (["--rank-balance", "-0.5"], "--rank-balance: must be a finite number >= 0, got '-0.5'"),
    (["--tp-plan", "manual"], "--tp-plan: invalid choice: 'manual'"),
    (["--rank-balance", "0.1"], "rank_balance=0.1 needs a tensor-parallel model"),  # reaches from_pretrained
    (["--param", "window"], "'window' is not NAME=VALUE"),
])
def test_bad_flags_exit_with_a_message_in_cli_terms(model_dir, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--model", model_dir, "--prompt", "x", *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_sweep_gives_the_apis_answers_with_score_files(model_dir, tmp_path, capsys):
    scores = {f"{layer}-{head}": torch.rand(3).tolist() for layer in range(2) for head in range(4)}
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(scores), encoding="utf-8")
    argv = ["sweep", "--model", model_dir, "--backend", "torch", "--max-new-tokens", "6", "--prompt", PROMPT,
            "--methods", "full", "snapkv:window=4", "headkv-r:beta=2", "--kv-sizes", "9", "12", "--head-scores",
            str(path), "--json"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(row["stats"]["method"], row["stats"]["kv_size"]) for row in out] == [
        ("full", None), ("snapkv:window=4", 9), ("snapkv:window=4", 12), ("headkv-r:beta=2", 9),
        ("headkv-r:beta=2", 12)]
    for row in out[1:]:
        method, _, params = row["stats"]["method"].partition(":")
        key, value = params.split("=")
        extra = {"head_scores": str(path)} if method == "headkv-r" else {}
        expected = api_tokens(model_dir, method, generate_kwargs={"kv_size": row["stats"]["kv_size"]},
                              **extra, **{key: float(value) if key == "beta" else int(value)})
        assert row["token_ids"] == expected, row["stats"]["method"]
    assert out[0]["token_ids"] == api_tokens(model_dir, "full")


@pytest.mark.parametrize(("flags", "message"), [
    (["--methods", "nope"], "--methods 'nope' is unknown"),
    (["--methods", "snapkv", "--head-scores", "s.json"], "--head-scores 's.json': none of --methods ['snapkv'] "
                                                         "reads such a file"),
])
def test_bad_sweep_flags_exit_with_a_message_in_cli_terms(model_dir, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sweep", "--model", model_dir, "--prompt", "x", "--kv-sizes", "8", *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
