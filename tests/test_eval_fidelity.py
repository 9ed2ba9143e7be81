"""The fidelity evaluation: its metrics against hand-computed values, the kept positions recorded from the engine's
own selection, and `run_fidelity` / `raggedkv eval fidelity` end to end on a tiny random model (resume, merge, CLI
defaults equal to the API's)."""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch
from raggedkv.engine.backend import TORCH_BACKEND
from raggedkv.engine.eval import fidelity as fidelity_module
from raggedkv.engine.eval import run_fidelity
from raggedkv.engine.eval.fidelity import top_head_mask
from raggedkv.engine.eval.fidelity_measure import KeptPositions, answer_scores, needle_kept
from raggedkv.engine.eval.fidelity_prompts import FACTS, diary_sentences
from raggedkv.engine.eval.fidelity_stats import clustered_mean, paired_differences, versus
from raggedkv.engine.eval.haystack import filler_sentences
from raggedkv.engine.heads.haystack import haystack_sentences
from raggedkv.engine.heads.needles import REASONING_NEEDLES, RETRIEVAL_NEEDLES
from raggedkv.engine.eval.needles import NEEDLES

from .test_eval_commands import run_cli, tiny_model  # noqa: F401  (the tiny model fixture)


def test_clustered_se_on_a_known_case():
    # clusters a = (1, 2), b = (3, 4): mean 2.5, cluster residual sums -2 and +2 -> sqrt(2/1 * 8) / 4 = 1
    assert clustered_mean([1.0, 2.0, 3.0, 4.0], ["a", "a", "b", "b"]) == (2.5, 1.0)
    values = torch.randn(12, dtype=torch.float64)
    clusters = [i % 4 for i in range(12)]  # equal sizes: the SE of the 4 cluster means
    means = torch.stack([values[[i for i in range(12) if clusters[i] == c]].mean() for c in range(4)])
    mean, se = clustered_mean(values.tolist(), clusters)
    assert mean == pytest.approx(float(values.mean()))
    assert se == pytest.approx(float(means.std(unbiased=True) / 2))
    assert math.isnan(clustered_mean([1.0, 2.0], ["a", "a"])[1])  # one cluster: no SE


def test_paired_differences_pair_probes_at_the_same_kv_size():
    def record(method, kv_size, fact, value, depth=0):
        return {"method": method, "kv_size": kv_size, "length": 100, "depth": depth, "fact": fact,
                "answer_logprob": value}

    records = [record("snapkv", 8, "a", -5.0), record("snapkv", 8, "b", -7.0), record("x", 8, "a", -4.0),
               record("x", 8, "b", -4.0), record("x", 16, "a", 0.0)]  # kv_size 16 has no baseline
    diffs = paired_differences(records, "snapkv")
    assert set(diffs) == {("x", 8)}
    mean, se, pairs = diffs["x", 8]
    assert (mean, pairs) == (2.0, 2) and se == pytest.approx(1.0)  # differences 1 and 3 in two clusters


def test_versus_sets_one_method_against_every_other():
    def record(method, kv_size, fact, value, beta=None):
        return {"method": method, "kv_size": kv_size, "length": 100, "depth": 0, "fact": fact,
                "answer_logprob": value, "beta": beta}

    records = [record("full", None, f, 0.0) for f in "ab"]
    records += [record("h", 8, "a", -1.0, 2.0), record("h", 8, "b", -2.0, 2.0)]
    records += [record("s", 8, "a", -5.0), record("s", 8, "b", -7.0)]  # h - s: 4 and 5 -> 4.5 +- 0.5, t = 9
    records += [record("p", 8, "a", -3.0), record("p", 8, "b", -2.0)]  # h - p: 2 and 0 -> 1.0 +- 1.0, t = 1
    columns, rows = versus(records, "h")
    assert columns == ["kv_size", "beta", "s", "p", "not ahead by > 2 SE"]
    assert rows == [[8, "2", "+4.5 ± 0.5 (+9.0)", "+1.0 ± 1.0 (+1.0)", "p"]]
    _, rows = versus([r for r in records if r["method"] != "p"], "h")
    assert rows[0][-1] == "-"


def test_answer_scores_match_hand_computed_values():
    logits = torch.randn(3, 5, 11)
    logits[1] = logits[0]  # sequence 1 is identical to the reference
    answer = torch.randint(0, 11, (5,))
    scores = answer_scores(logits, answer)
    logp = torch.log_softmax(logits.double(), dim=-1)
    expected = torch.stack([sum(logp[b, t, answer[t]] for t in range(5)) for b in range(3)])
    torch.testing.assert_close(scores["answer_logprob"], expected)
    kl = [(logp[0].exp() * (logp[0] - logp[b])).sum(-1).mean() for b in range(3)]
    torch.testing.assert_close(scores["kl"], torch.stack(kl).clamp(min=0))
    assert float(scores["kl"][0]) == 0.0 and float(scores["kl"][1]) == 0.0 and float(scores["kl"][2]) > 0
    assert float(scores["top1"][0]) == float(scores["top1"][1]) == 1.0
    top1 = (logp[2].argmax(-1) == logp[0].argmax(-1)).double().mean()
    assert float(scores["top1"][2]) == float(top1)


def test_kept_positions_record_the_engines_selection():
    """A planted selection: scores that rank known positions first; the recorder sees what the kernel packed."""
    heads, n, window, head_dim = 2, 20, 4, 8
    m = n - window
    planted = [[3, 7, 11], [0, 15]]
    scores = torch.rand(heads, m) * 0.5
    for head, positions in enumerate(planted):
        scores[head, positions] = 1.0 + torch.rand(len(positions))
    budgets = torch.tensor([len(p) for p in planted])
    k_src, v_src = torch.randn(heads, n, head_dim), torch.randn(heads, n, head_dim)
    capacity = [int(b) + window + 2 for b in budgets]
    kv_indptr = torch.tensor([0, capacity[0], capacity[0] + capacity[1]])
    k_cache, v_cache = torch.zeros(sum(capacity), head_dim), torch.zeros(sum(capacity), head_dim)
    kv_lens = torch.zeros(heads, dtype=torch.int64)
    recorder = KeptPositions(TORCH_BACKEND, num_kv_heads=heads)
    recorder.backend.select_and_pack(scores, budgets, k_src, v_src, k_cache, v_cache, kv_indptr, kv_lens)
    (mask,) = recorder.kept[0]
    for head, positions in enumerate(planted):
        expected = sorted(positions) + list(range(m, n))
        assert mask[head].nonzero().flatten().tolist() == expected
        rows = k_cache[int(kv_indptr[head]) : int(kv_indptr[head]) + len(expected)]
        torch.testing.assert_close(rows, k_src[head, expected])  # the real pack happened too
    kept = needle_kept([mask], (2, 8))  # needle at positions 2..7: head 0 kept 3 and 7, head 1 none
    torch.testing.assert_close(kept, torch.tensor([[2 / 6, 0.0]], dtype=torch.float64))


def test_top_heads_are_the_best_kv_heads_by_group_mean():
    scores = torch.tensor([[0.0, 0.0, 5.0, 5.0], [1.0, 3.0, 0.0, 0.1]], dtype=torch.float64)  # 2 layers, 4 q heads
    mask = top_head_mask(scores, num_kv_heads=2, fraction=0.5)  # KV-head means: [0, 5], [2, 0.05]
    assert mask.tolist() == [[False, True], [True, False]]
    with pytest.raises(ValueError, match="top_heads"):
        top_head_mask(scores, 2, 0.0)


def test_facts_and_filler_are_the_evaluations_own():
    words = {s.lower() for f in FACTS for s in f.sentence.split()[:6]}
    others = " ".join([*(n.text for n in RETRIEVAL_NEEDLES + REASONING_NEEDLES), *(n.sentence for n in NEEDLES)])
    assert not any(f.sentence in others for f in FACTS) and len(FACTS) == 10 and words
    diary = set(diary_sentences(200))
    assert not diary & set(filler_sentences(200)) and not diary & set(haystack_sentences(200))


GRID = {"methods": ["snapkv", "streamingllm"], "kv_sizes": [16], "lengths": [300], "depths": [50], "facts": 2,
        "progress": False}


def test_run_fidelity_records_resume_and_merge(tiny_model, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "fidelity.json"
    result = run_fidelity(model=tiny_model, out=out, **GRID)
    by_method = {}
    for record in result.records:
        by_method.setdefault(record["method"], []).append(record)
    assert sorted(by_method) == ["full", "snapkv", "streamingllm"] and len(result.records) == 6
    for record in by_method["full"]:  # the reference against itself
        assert record["kl"] == 0.0 and record["top1"] == 1.0 and record["needle_kept"] == 1.0
        assert record["kv_size"] is None and record["kept_fraction"] == 1.0
    for record in by_method["snapkv"] + by_method["streamingllm"]:
        assert record["kl"] >= 0 and 0 <= record["needle_kept"] <= 1 and record["kept_fraction"] < 1
        assert record["answer_logprob"] < 0 and record["beta"] is None
    assert math.isnan(by_method["snapkv"][0]["needle_kept_top"])  # no packaged Retrieval file for this model
    assert "snapkv" in result.table and "d_vs_snapkv" in result.table
    assert (tmp_path / "fidelity.png").is_file()
    saved = json.loads(out.read_text())
    assert saved["task"] == "fidelity" and len(saved["records"]) == 6 and saved["summary"]["baseline"] == "snapkv"

    def no_work(*args, **kwargs):
        raise AssertionError("a resumed run measured a cell already in the file")

    monkeypatch.setattr(fidelity_module, "measure_prompt", no_work)
    resumed = run_fidelity(model=tiny_model, out=out, compare="streamingllm", **GRID)  # nothing left to do
    assert len(resumed.records) == 6 and "streamingllm minus each method" in resumed.table
    assert json.loads(out.read_text())["summary"]["versus"]["method"] == "streamingllm"
    monkeypatch.undo()
    with pytest.raises(ValueError, match="another grid"):
        run_fidelity(model=tiny_model, out=out, **{**GRID, "kv_sizes": [24]})
    merged = run_fidelity(model=tiny_model, out=out, merge=True, **{**GRID, "kv_sizes": [24]})
    assert sorted({(r["method"], r["kv_size"]) for r in merged.records}, key=str) == sorted(
        {("full", None), ("snapkv", 16), ("snapkv", 24), ("streamingllm", 16), ("streamingllm", 24)}, key=str)


def test_bad_arguments_are_named(tiny_model):  # noqa: F811
    with pytest.raises(ValueError, match="baseline='pyramidkv'"):
        run_fidelity(model=tiny_model, baseline="pyramidkv", **GRID)
    with pytest.raises(ValueError, match="compare='headkv-r2'"):
        run_fidelity(model=tiny_model, compare="headkv-r2", **GRID)
    with pytest.raises(ValueError, match="facts=11"):
        run_fidelity(model=tiny_model, **{**GRID, "facts": 11})


def test_cli_defaults_are_the_apis_and_the_cli_runs(tiny_model, tmp_path, capsys):  # noqa: F811
    from raggedkv.engine import cli
    from raggedkv.engine.eval import commands

    args = cli.build_parser(load=["eval"]).parse_args(["eval", "fidelity"])
    kwargs = commands._fidelity_kwargs(args)
    signature = inspect.signature(run_fidelity).parameters
    for name in sorted(set(kwargs) - {"out", "head_scores"}):
        default = signature[name].default
        assert kwargs[name] == (list(default) if isinstance(default, tuple) else default), name
    out = tmp_path / "cli.json"
    code = run_cli(["eval", "fidelity", "--model", tiny_model, "--methods", "snapkv", "streamingllm:sinks=2",
                    "--kv-sizes", "16", "--lengths", "300", "--depths", "50", "--facts", "2", "--out", str(out),
                    "--no-progress"])
    assert code == 0
    assert "streamingllm:sinks=2" in capsys.readouterr().out
    assert {r["method"] for r in json.loads(out.read_text())["records"]} == {"full", "snapkv", "streamingllm:sinks=2"}


@pytest.mark.parametrize("question_window", [True, False])
def test_the_question_window_reaches_the_measurement_and_the_settings(tiny_model, tmp_path, monkeypatch,  # noqa: F811
                                                                       question_window):
    from raggedkv.engine import Engine

    tokenizer = Engine.from_pretrained(tiny_model, backend="torch").tokenizer
    assert getattr(tokenizer, "chat_template", None)  # the header exists only with a template
    headers = []
    measure = fidelity_module.measure_prompt

    def recording(*args):
        headers.append(args[7])  # measure_prompt(..., top_heads, header, suffix)
        return measure(*args)

    monkeypatch.setattr(fidelity_module, "measure_prompt", recording)
    out = tmp_path / "fidelity.json"
    run_fidelity(model=tiny_model, out=out, question_window=question_window, **{**GRID, "facts": 1})
    assert headers and all((header > 0) == question_window for header in headers)
    assert json.loads(out.read_text())["settings"]["question_window"] is question_window


def test_the_question_agnostic_setting_compresses_the_context_alone(tiny_model, tmp_path, monkeypatch):  # noqa: F811
    """The compressed ids end with the diary, the question and assistant header are fed after compression, and the
    full cache (nothing compressed) scores the answer as the question-aware setting does: same text, same tokens."""
    from raggedkv.engine import Engine

    tokenizer = Engine.from_pretrained(tiny_model, backend="torch").tokenizer
    calls = []
    measure = fidelity_module.measure_prompt

    def recording(*args):
        calls.append(args)
        return measure(*args)

    monkeypatch.setattr(fidelity_module, "measure_prompt", recording)
    grid = {**GRID, "facts": 1}
    agnostic = run_fidelity(model=tiny_model, out=tmp_path / "agnostic.json", question_agnostic=True, **grid)
    aware = run_fidelity(model=tiny_model, out=tmp_path / "aware.json", **grid)
    (ids, header, suffix), (aware_ids, aware_header, aware_suffix) = [(c[2], c[7], c[8]) for c in calls]
    assert header == 0 and aware_header > 0 and list(aware_suffix) == []
    assert tokenizer.decode(ids).rstrip().endswith("</diary>")
    question = tokenizer.decode(suffix)
    assert FACTS[0].question in question and "Answer:" in question
    assert list(ids) + list(suffix) == list(aware_ids)  # the split is at a token boundary of the same text
    full = [{r["method"]: r["answer_logprob"] for r in result.records} for result in (agnostic, aware)]
    assert full[0]["full"] == pytest.approx(full[1]["full"], abs=1e-3)
    assert full[0]["snapkv"] != full[1]["snapkv"]  # the window saw the diary's end, not the question
    assert json.loads((tmp_path / "agnostic.json").read_text())["settings"]["question_agnostic"] is True
    assert "question-agnostic" in agnostic.table and "question-aware" in aware.table
