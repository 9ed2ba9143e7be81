"""The evaluation commands end to end on a tiny random Llama model (answers are noise; the machinery is tested):
from Python and through the argparse parser, with resume after an interruption."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from raggedkv.engine.eval import run_longbench, run_niah
from raggedkv.engine.eval.generation import Runner
from raggedkv.engine.eval.haystack import filler_sentences
from raggedkv.engine.eval.longbench_spec import TASKS
from raggedkv.engine.eval.needles import NEEDLES, REASONING_NEEDLES
from raggedkv.engine.eval.niah import TEMPLATE

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.cache
def tiny_tokenizer():
    """A byte-level BPE tokenizer (vocabulary 1024) trained on the haystack, needles and prompt templates, with a
    ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [*filler_sentences(300), *(n.sentence + " " + n.question for n in NEEDLES)]
    corpus += [f"{n.fact} {n.distractor} {n.question}" for n in REASONING_NEEDLES]
    corpus += [TEMPLATE, *(task.template for task in TASKS.values())]
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", bos_token="<|im_start|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A random 2-layer Llama (4 query / 2 KV heads, 2K context) with the tiny tokenizer, saved as an HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def run_cli(argv: list[str]) -> int:
    """`raggedkv ARGV` through the project's entry point."""
    from raggedkv.engine import cli

    return cli.main(argv)


def test_niah_from_python(tiny_model, tmp_path):
    out = tmp_path / "niah.json"
    result = run_niah(model=tiny_model, methods=["full", "snapkv", "streamingllm"], kv_sizes=[16, 32],
                      lengths=[200, 400], depths=[0, 100], max_new_tokens=4, out=out, progress=False)
    assert len(result.records) == (1 + 2 + 2) * 2 * 2  # full once, the others at both budgets; 2 lengths x 2 depths
    for record in result.records:
        assert record["length"] - 40 < record["prompt_tokens"] <= record["length"]
        assert isinstance(record["correct"], bool) and 0 <= record["rouge1_recall"] <= 1
        if record["method"] == "full":
            assert record["kv_size"] is None and record["kept_fraction"] == 1.0
        else:
            assert record["kept_fraction"] < 1.0
    assert [row[:3] for row in result.rows] == [["full", None, 4], ["snapkv", 16, 4], ["snapkv", 32, 4],
                                                ["streamingllm", 16, 4], ["streamingllm", 32, 4]]
    assert result.table.splitlines()[1].split() == ["method", "kv_size", "n", "accuracy_%", "retained_%",
                                                   "rouge1_recall_%", "kv_kept_%", "s/prompt"]
    saved = json.loads(out.read_text())
    assert saved["task"] == "niah" and len(saved["records"]) == 20 and saved["summary"]["rows"] == result.rows
    for method in ("full", "snapkv", "streamingllm"):
        assert (tmp_path / f"niah-{method}.png").stat().st_size > 0
    assert tmp_path / "niah-accuracy.png" in result.files and (tmp_path / "niah-accuracy.png").stat().st_size > 0


def test_reasoning_from_the_command_line(tiny_model, tmp_path, capsys):
    out = tmp_path / "reasoning.json"
    code = run_cli(["eval", "reasoning", "--model", tiny_model, "--methods", "full,snapkv", "--kv-sizes", "16",
                    "--lengths", "250", "--depths", "0:100:50", "--needles", "2", "--max-new-tokens", "4",
                    "--out", str(out), "--no-progress", "--threads", str(torch.get_num_threads())])
    assert code == 0
    printed = capsys.readouterr().out
    assert "distracted_%" in printed and f"wrote {out}" in printed
    records = json.loads(out.read_text())["records"]
    assert len(records) == 2 * 3 * 2
    assert {r["needle"] for r in records} == {n.id for n in REASONING_NEEDLES[:2]}


def test_an_interrupted_run_resumes_where_it_stopped(tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "niah.json"
    grid = {"model": tiny_model, "methods": ["full", "snapkv"], "kv_sizes": [16], "lengths": [200],
            "depths": [0, 50, 100], "max_new_tokens": 4, "out": out, "progress": False}
    real_sweep, calls = Runner.sweep, []

    def interrupted_after_two(self, prompt, cells, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(list(cells))
        return real_sweep(self, prompt, cells, *args, **kwargs)

    monkeypatch.setattr(Runner, "sweep", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_niah(**grid)
    saved = json.loads(out.read_text())["records"]
    assert len(saved) == 4 and calls == [[("full", None), ("snapkv", 16)]] * 2  # one sweep per prompt

    def recording(self, prompt, cells, *args, **kwargs):
        calls.append(list(cells))
        return real_sweep(self, prompt, cells, *args, **kwargs)

    calls.clear()
    monkeypatch.setattr(Runner, "sweep", recording)
    wider = {**grid, "kv_sizes": [16, 32]}  # merging may add budgets: only the missing cells run
    result = run_niah(**wider, merge=True)
    assert calls == [[("snapkv", 32)], [("snapkv", 32)], [("full", None), ("snapkv", 16), ("snapkv", 32)]]
    assert len(result.records) == 9 and result.records[:4] == saved

    calls.clear()
    run_niah(**wider)  # the file's grid is now the wider one: a plain rerun resumes it
    assert calls == []  # everything is done: nothing is generated


def test_a_file_measured_with_other_packaged_data_is_not_resumed(tiny_model, tmp_path, monkeypatch):
    """The settings record the packaged score files and defaults sidecar a method reads by default: after a
    recalibration the old file is refused (naming the change), not silently mixed with new records."""
    from raggedkv.engine.methods import defaults
    from raggedkv.engine.methods.head_scores import model_slug

    monkeypatch.setattr(defaults, "DATA_DIR", tmp_path)
    sidecar = tmp_path / f"{model_slug(tiny_model)}-defaults.json"
    sidecar.write_text(json.dumps({"defaults": {"headkv-r2": {"beta": {"16": 2.0}}}}))
    grid = {"model": tiny_model, "methods": ["full"], "kv_sizes": [16], "lengths": [200], "depths": [50],
            "needles": 1, "max_new_tokens": 2, "out": tmp_path / "niah.json", "progress": False}
    run_niah(**grid)
    recorded = json.loads(grid["out"].read_text())["settings"]["packaged_data"]
    assert list(recorded) == [sidecar.name]
    run_niah(**grid)  # the same data: resumed
    sidecar.write_text(json.dumps({"defaults": {"headkv-r2": {"beta": {"16": 3.0}}}}))
    with pytest.raises(ValueError, match=r"other settings \(packaged_data: "):
        run_niah(**grid)


def write_longbench_fixtures(folder: Path) -> dict[str, list[dict]]:
    """Two made-up examples for each of a handful of datasets, one with a context longer than the model."""
    long_context = " ".join(filler_sentences(400))
    rows = {
        "hotpotqa": [("Which valley?", long_context, ["the river valley"], None),
                     ("Who kept the log?", "The warden kept the log.", ["the warden"], None)],
        "gov_report": [("", "The agency reviewed its budget and found savings.", ["The agency found savings."], None)],
        "trec": [("What is a curlew?", "Question: Who built it?\nType: Individual\n", ["Description of something"],
                  ["Description of something", "Individual", "Location"])],
        "samsum": [("Dialogue: A: hi\nB: hello\nSummary: ", "Dialogue: A: bye\nSummary: A leaves.", ["A and B greet."],
                    None)],
        "passage_count": [("", "Paragraph 1: a. Paragraph 2: b. Paragraph 3: a.", ["2"], None)],
        "passage_retrieval_en": [("An abstract.", "Paragraph 1: x\nParagraph 2: y", ["Paragraph 2"], None)],
        "lcc": [("", "def add(a, b):\n    ", ["return a + b"], None)],
    }
    examples = {}
    for dataset, items in rows.items():
        examples[dataset] = [
            {"input": q, "context": c, "answers": a, "all_classes": classes, "length": len(c.split()),
             "dataset": dataset, "language": "en", "_id": f"{dataset}-{i}"}
            for i, (q, c, a, classes) in enumerate(items)
        ]
        (folder / f"{dataset}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples[dataset]))
    return examples


def test_longbench_from_python_and_the_command_line(tiny_model, tmp_path, capsys):
    examples = write_longbench_fixtures(tmp_path)
    datasets = list(examples)
    result = run_longbench(tmp_path, datasets, model=tiny_model, methods=["full", "snapkv"], kv_sizes=[16],
                           max_length=256, max_new_tokens=4, progress=False)
    assert len(result.records) == 2 * sum(map(len, examples.values()))
    assert result.columns == ["method", "kv_size", *datasets, "average", "kv_kept_%"]
    by_id = {(r["method"], r["id"]): r for r in result.records}
    assert by_id["full", "hotpotqa-0"]["prompt_tokens"] <= 256 + 16  # truncated, then the chat template
    code_prompt = TASKS["lcc"].template.format(**examples["lcc"][0])
    assert by_id["full", "lcc-0"]["prompt_tokens"] == len(tiny_tokenizer()(code_prompt)["input_ids"])  # no chat
    assert all(0 <= r["score"] <= 1 for r in result.records)
    assert all("\n" not in r["answer"] for r in result.records if r["dataset"] == "samsum")

    out = tmp_path / "lb.json"
    code = run_cli(["eval", "longbench", "--data-dir", str(tmp_path), "--datasets", "lcc", "trec", "--model",
                    tiny_model, "--methods", "snapkv", "--kv-sizes", "16", "--max-new-tokens", "4", "--out", str(out),
                    "--no-progress"])
    assert code == 0
    assert "average" in capsys.readouterr().out
    assert len(json.loads(out.read_text())["records"]) == 2


def test_bad_arguments_name_what_is_wrong(tiny_model, tmp_path, capsys):
    with pytest.raises(ValueError, match="'nosuchkv'"):
        run_niah(model=tiny_model, methods=["nosuchkv"], progress=False)
    with pytest.raises(ValueError, match="depths holds 150"):
        run_niah(model=tiny_model, methods=["full"], depths=[150], progress=False)
    with pytest.raises(ValueError, match="needles=7 must be between 1 and 6"):
        run_niah(model=tiny_model, methods=["full"], needles=7, progress=False)
    with pytest.raises(FileNotFoundError, match="'headkv-r' needs"):  # before any work, not after full's cells
        run_niah(model=tiny_model, methods=["full", "headkv-r"], kv_sizes=[16], lengths=[200], depths=[0],
                 out=tmp_path / "x.json", progress=False)
    assert json.loads((tmp_path / "x.json").read_text())["records"] == []
    with pytest.raises(SystemExit) as exit_:
        run_cli(["eval", "longbench", "--data-dir", str(tmp_path), "--datasets", "qasper", "--model", tiny_model])
    assert exit_.value.code == 2
    assert "raggedkv eval: error: data_dir=" in capsys.readouterr().err
