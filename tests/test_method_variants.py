"""Method variants spelled `name:param=value,...`: typed by what the method accepts, merged with explicit
parameters, refused by name when wrong, and recorded by their canonical label wherever a method name is taken
(get_method, Engine.from_model, Engine.sweep, `raggedkv generate --method`, `raggedkv eval --methods`)."""

from __future__ import annotations

import json

import pytest
from raggedkv.engine import Engine, cli
from raggedkv.engine.eval import run_niah
from raggedkv.engine.eval.commands import method_list
from raggedkv.engine.methods import get_method
from tests.engine_helpers import char_tokenizer, random_prompts, tiny_model
from tests.test_eval_store import GRID, runners  # noqa: F401 (the fixture)


def test_a_spelling_is_typed_merged_and_labelled_canonically():
    method = get_method("pyramidkv:window=16,beta=2", faithful=True)
    assert (method.scoring.window, method.beta, method.faithful) == (16, 2.0, True)
    assert method.label == "pyramidkv:beta=2,faithful=true,window=16"
    assert get_method("pyramidkv:beta=2.0").label == get_method("pyramidkv", beta=2).label == "pyramidkv:beta=2"
    assert get_method("pyramidkv:beta=2.5").label == "pyramidkv:beta=2.5"
    assert get_method("snapkv").label == "snapkv" and get_method("snapkv", window=4).label == "snapkv:window=4"
    assert get_method(" snapkv : pool = avg ").label == "snapkv:pool=avg"


@pytest.mark.parametrize("spelling, error, words", [
    ("snapkv:nope=1", ValueError, ["'snapkv:nope=1'", "'nope'", "'window'"]),
    ("snapkv:window=x", ValueError, ["'snapkv:window=x'", "window must be an int >= 1", "'x'"]),
    ("snapkv:window", ValueError, ["'window' is not param=value"]),
    ("snapkv:window=1,window=2", ValueError, ["'window' is given twice"]),
    ("nokv:window=1", ValueError, ["'nokv' is unknown", "snapkv"]),
    ("snapkv:window=0", ValueError, ["window must be an int >= 1, got 0"]),
    ("snapkv:pool=median", ValueError, ["pool must be one of"]),
])
def test_a_bad_spelling_is_refused_by_name(spelling, error, words):
    with pytest.raises(error) as caught:
        get_method(spelling)
    assert all(word in str(caught.value) for word in words), str(caught.value)


def test_a_parameter_both_spelled_and_given_is_refused():
    with pytest.raises(ValueError, match="'window' is given both"):
        get_method("snapkv:window=16", window=8)


def test_engine_and_sweep_take_spellings_and_label_results():
    model, tokenizer = tiny_model(seed=31), char_tokenizer()
    prompt = random_prompts([40])[0]
    engine = Engine.from_model(model, tokenizer, method="snapkv:window=4", backend="torch")
    assert engine.method.scoring.window == 4 and engine.method.label == "snapkv:window=4"
    alone = engine.generate_ids([prompt], kv_size=12, max_new_tokens=3)[0]
    assert alone.stats.method == "snapkv:window=4"
    swept = engine.sweep(prompt, [("snapkv:window=4", 12), ("snapkv:window=8", 12), ("snapkv", 12)], max_new_tokens=3)
    assert [r.stats.method for r in swept] == ["snapkv:window=4", "snapkv:window=8", "snapkv"]
    assert swept[0].token_ids == alone.token_ids
    assert swept[0].stats.kept_tokens == alone.stats.kept_tokens


def test_generate_cli_takes_a_spelling(tmp_path, capsys):
    tiny_model(seed=30).save_pretrained(tmp_path)
    char_tokenizer().save_pretrained(tmp_path)
    argv = ["generate", "--model", str(tmp_path), "--backend", "torch", "--max-new-tokens", "3", "--kv-size", "8",
            "--prompt", "a longer prompt here.", "--json", "--method", "snapkv:window=4", "--param", "pool=avg"]
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["method"] == "snapkv:pool=avg,window=4"
    with pytest.raises(SystemExit):
        cli.main([*argv, "--param", "window=2"])
    assert "'window' is given both" in capsys.readouterr().err


def test_eval_methods_keep_variants_whole():
    assert method_list("snapkv,pyramidkv:beta=2,window=16,full") == ["snapkv", "pyramidkv:beta=2,window=16", "full"]
    assert method_list("pyramidkv:beta=2") == ["pyramidkv:beta=2"]


def test_eval_keeps_each_variant_its_own_cell(runners, tmp_path):  # noqa: F811
    variants = ["pyramidkv:beta=1.01", "pyramidkv:beta=2"]
    result = run_niah(**{**GRID, "methods": variants, "depths": [0]}, out=tmp_path / "niah.json")
    assert sorted(record["method"] for record in result.records) == variants
    assert runners[-1].sweeps == [[(variants[0], 16), (variants[1], 16)]]
    with pytest.raises(ValueError, match="has no parameter 'nope'"):
        run_niah(**{**GRID, "methods": ["snapkv:nope=1"]}, out=tmp_path / "other.json")
