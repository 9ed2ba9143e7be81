"""Prompt building for the evaluations: LongBench templates and truncation, chat wrapping, stops, the haystack,
the resumable results file and the command-line list parsers."""

import argparse
import json

import pytest
from raggedkv.engine.eval.commands import int_list, method_path
from raggedkv.engine.eval.haystack import boundary_at_depth, filler_sentences, fit_haystack, join_with_insertions
from raggedkv.engine.eval.longbench import build_prompt, default_max_length, load_examples
from raggedkv.engine.eval.longbench_spec import TASKS
from raggedkv.engine.eval.needles import NEEDLES, REASONING_NEEDLES
from raggedkv.engine.eval.prompting import cut_at_stop, stop_token_ids, truncate_middle
from raggedkv.engine.eval.report import format_table
from raggedkv.engine.eval.store import ResultStore

from tests.test_eval_commands import tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_every_template_takes_context_and_input_only():
    assert len(TASKS) == 16
    for name, task in TASKS.items():
        filled = task.template.format(context="<C>", input="<I>")
        assert "<C>" in filled, name
        assert task.max_new_tokens in (32, 64, 128, 512), name
    assert TASKS["narrativeqa"].template.startswith("You are given a story, which can be either a novel")
    assert TASKS["lcc"].template == "Please complete the code given below. \n{context}Next line of code:\n"
    assert [d for d, t in TASKS.items() if not t.chat] == ["trec", "triviaqa", "samsum", "lcc", "repobench-p"]
    assert [d for d, t in TASKS.items() if t.stop_at_newline] == ["samsum"]


def test_truncate_middle_keeps_both_ends(tokenizer):
    text = " ".join(f"word{i}" for i in range(400))
    assert truncate_middle(tokenizer, text, 10_000) == text
    cut = truncate_middle(tokenizer, text, 64)
    ids = tokenizer(text)["input_ids"]
    assert cut.startswith(tokenizer.decode(ids[:32])) and cut.endswith(tokenizer.decode(ids[-32:]))
    assert abs(len(tokenizer(cut)["input_ids"]) - 64) <= 2  # re-tokenising at the seam may merge a token or two
    with pytest.raises(ValueError, match="max_length=1"):
        truncate_middle(tokenizer, text, 1)


def test_build_prompt_keeps_instructions_at_both_ends(tokenizer):
    example = {"context": "filler " * 3000, "input": "What is the question?"}
    prompt = build_prompt(tokenizer, TASKS["hotpotqa"], example, max_length=200)
    assert prompt.startswith("Answer the question based on the given passages.")
    assert prompt.endswith("Question: What is the question?\nAnswer:")
    assert len(tokenizer(prompt)["input_ids"]) <= 202
    short = {"context": "a b c", "input": "q"}
    expected = "Please complete the code given below. \na b cNext line of code:\n"
    assert build_prompt(tokenizer, TASKS["lcc"], short, 200) == expected


def test_default_max_length_leaves_room_for_answer_and_template():
    assert default_max_length(8192, TASKS["gov_report"], template_tokens=20) == 8192 - 512 - 20
    assert default_max_length(8192, TASKS["lcc"], template_tokens=0) == 8192 - 64


def test_stop_tokens_and_cut(tokenizer):
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    newline = tokenizer.encode("\n", add_special_tokens=False)[-1]
    assert end in stop_token_ids(tokenizer) and newline not in stop_token_ids(tokenizer)
    assert newline in stop_token_ids(tokenizer, newline=True)
    assert cut_at_stop([5, 6, end, 7], stop_token_ids(tokenizer)) == [5, 6]
    assert cut_at_stop([5, 6], [end]) == [5, 6]


def test_load_examples_reads_jsonl_and_names_missing_files(tmp_path):
    rows = [{"input": "q", "context": "c", "answers": ["a"], "all_classes": None, "_id": str(i)} for i in range(3)]
    (tmp_path / "qasper.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["_id"] for r in load_examples(tmp_path, "qasper", limit=2)] == ["0", "1"]
    with pytest.raises(ValueError, match="has no musique.jsonl"):
        load_examples(tmp_path, "musique")
    with pytest.raises(ValueError, match="'dureader'"):
        load_examples(tmp_path, "dureader")


def test_filler_is_deterministic_and_extends():
    assert filler_sentences(50) == filler_sentences(200)[:50]
    assert filler_sentences(5, seed=1) != filler_sentences(5)
    assert len(set(filler_sentences(500))) > 400


def test_filler_never_states_a_needle_answer():
    text = " " + " ".join(filler_sentences(4000)).lower() + " "
    for needle in NEEDLES:
        assert all(f" {answer} " not in text for answer in needle.answers), needle.id
    for needle in REASONING_NEEDLES:
        for answer in (*needle.answers, *needle.distractor_answers):
            if not answer.isdigit():  # the logbook has counts; the reasoning numbers are judged with the words too
                assert f" {answer} " not in text, (needle.id, answer)


def test_insertions_land_at_depth_boundaries():
    sentences = ["A.", "B.", "C.", "D."]
    assert join_with_insertions(sentences, [(0, "X."), (4, "Y."), (2, "Z.")]) == "X. A. B. Z. C. D. Y."
    assert [boundary_at_depth([10, 10, 10, 10], d) for d in (0, 25, 50, 74, 100)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="depth=101"):
        boundary_at_depth([1], 101)


@pytest.mark.parametrize("length", [120, 300, 777])
def test_fit_haystack_hits_the_length(tokenizer, length):
    def render(context):
        return f"Notes:\n{context}\nQuestion?"

    def count(text):
        return len(tokenizer(text)["input_ids"])

    prompt, n = fit_haystack(render, count, length, [(50, "THE NEEDLE SENTENCE.")])
    assert n == count(prompt) <= length
    assert length - n <= max(count(s) for s in filler_sentences(60)) + 2
    middle = prompt.index("THE NEEDLE")
    assert 0.3 < middle / len(prompt) < 0.7
    with pytest.raises(ValueError, match="length=3 tokens is too short"):
        fit_haystack(render, count, 3, [])


def test_store_resumes_and_refuses_other_settings(tmp_path):
    path = tmp_path / "r.json"
    with ResultStore(path, "niah", {"model": "m"}, ("method", "n")) as store:
        store.add([{"method": "snapkv", "n": 1, "answer": "x"}])
        store.summary = {"rows": [[1]]}
    data = json.loads(path.read_text())
    assert data["records"] == [{"method": "snapkv", "n": 1, "answer": "x"}] and data["summary"] == {"rows": [[1]]}
    again = ResultStore(path, "niah", {"model": "m"}, ("method", "n"))
    assert again.done(("snapkv", 1)) and not again.done(("snapkv", 2))
    with pytest.raises(ValueError, match=r"other settings \(model: 'm' in the file, 'other' in this run\)"):
        ResultStore(path, "niah", {"model": "other"}, ("method", "n"))
    with pytest.raises(ValueError, match="holds 'niah' results, not 'longbench' ones"):
        ResultStore(path, "longbench", {"model": "m"}, ("method", "n"))


def test_format_table_aligns_columns():
    table = format_table(["method", "kv_size", "acc"], [["full", None, 100.0], ["snapkv", 64, 7.5]], title="T")
    assert table.splitlines() == [
        "T",
        "method  kv_size     acc",
        "full          -  100.00",
        "snapkv       64    7.50",
    ]


def test_list_parsers():
    assert int_list("32,64") == [32, 64]
    assert int_list("1000:3000:1000,5000") == [1000, 2000, 3000, 5000]
    assert int_list("0:100:25") == [0, 25, 50, 75, 100]
    for bad in ("a", "1:2:0", "1:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            int_list(bad)
    assert method_path("headkv-r=/tmp/s.json") == ("headkv-r", "/tmp/s.json")
    with pytest.raises(argparse.ArgumentTypeError):
        method_path("headkv-r")
