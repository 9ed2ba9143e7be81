"""Head scoring end to end on a tiny random Llama: prompts, the attention trace, resumable runs, the output files
and their round trip through the methods' loader."""

import argparse
import json

import pytest
import torch
from raggedkv.engine.heads import commands, run, trial
from raggedkv.engine.heads.haystack import haystack_sentences
from raggedkv.engine.heads.needles import REASONING_NEEDLES, RETRIEVAL_NEEDLES, needles_for
from raggedkv.engine.heads.output import head_score_lists, mean_table, write_json
from raggedkv.engine.heads.prompt import BUFFER_TOKENS, build_context, build_trial_prompt
from raggedkv.engine.heads.run import RunSettings, read_trial_log, run_grid
from raggedkv.engine.heads.trace import greedy_trace
from raggedkv.engine.methods.base import ModelShape
from raggedkv.engine.methods.head_scores import load_head_scores
from raggedkv.engine.models import load_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

LAYERS, HEADS, KV_HEADS, HEAD_DIM = 2, 4, 2, 8


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (one token per byte, no merges) built offline."""
    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<eos>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random tiny Llama (GQA 4 query / 2 KV heads) and the byte tokenizer, saved as an HF folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=HEADS * HEAD_DIM, intermediate_size=64,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         max_position_embeddings=2048, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(str(tiny_dir), "cpu")


def strip_timing(records):
    return [{key: value for key, value in record.items() if key != "seconds"} for record in records]


def test_haystack_is_deterministic_and_free_of_needle_words():
    assert haystack_sentences(10) == haystack_sentences(70)[:10]
    text = " ".join(haystack_sentences(400)).lower()
    for word in ("parrot", "astronaut", "pancake", "weekend", "fence", "tulip", "canoe", "heron", "works as",
                 "pharmacist", "plumber", "chemist", "dorit", "leopold", "ottavia", "rasmus", "hedda", "joaquin"):
        assert word not in text


@pytest.mark.parametrize("depth", [0, 50, 100])
def test_context_puts_the_needle_at_a_sentence_boundary(depth):
    tokenizer = byte_tokenizer()
    needle = RETRIEVAL_NEEDLES[0].text
    context = build_context(tokenizer, needle, 1200, depth)
    assert context == build_context(tokenizer, needle, 1200, depth)
    assert len(tokenizer(context).input_ids) <= 1200 - BUFFER_TOKENS
    before, after = context.split(needle)
    assert before == "" or before.endswith((". ", "\n\n"))
    assert after == "" or after.startswith((" ", "\n\n"))
    share = len(before) / (len(before) + len(after))
    assert abs(share - depth / 100) < 0.15
    assert build_context(tokenizer, needle, 0, depth) == needle


@pytest.mark.parametrize("needle", [RETRIEVAL_NEEDLES[1], *REASONING_NEEDLES])
@pytest.mark.parametrize("length, depth", [(900, 44), (900, 0), (0, 50)])
def test_trial_prompt_span_holds_exactly_the_answer(needle, length, depth):
    tokenizer = byte_tokenizer()
    prompt = build_trial_prompt(tokenizer, needle, length, depth, chat=False)
    start, end = prompt.span
    assert tokenizer.decode(prompt.ids[start:end]).strip() == needle.answer


def test_greedy_trace_matches_generate_and_eager_attention(tiny):
    model, _ = tiny
    prompt = torch.randint(0, 256, (1, 20))
    steps = list(greedy_trace(model, prompt[0].tolist(), 5, stop=lambda token: False))
    generated = model.generate(prompt, max_new_tokens=5, do_sample=False, min_new_tokens=5)[0, 20:]
    assert [step.token for step in steps] == generated.tolist()
    # the recorded rows equal the last-query rows of a full eager forward over prompt + generated tokens
    full = torch.cat([prompt, generated[None, :-1]], dim=1)
    eager = LlamaForCausalLM.from_pretrained(model.name_or_path, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = eager(full, output_attentions=True).attentions
    for index, step in enumerate(steps):
        position = 19 + index
        assert step.attention.shape == (LAYERS, HEADS, position + 1)
        expected = torch.stack([layer[0, :, position, : position + 1] for layer in attentions])
        torch.testing.assert_close(step.attention, expected, atol=1e-5, rtol=1e-4)
    assert model.config._attn_implementation == "sdpa"  # restored after tracing


def test_greedy_trace_stops_after_the_stop_token(tiny):
    model, _ = tiny
    steps = list(greedy_trace(model, [5, 6, 7], 10, stop=lambda token: True))
    assert len(steps) == 1


def test_interrupted_run_resumes_without_redoing_trials(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    settings = RunSettings("tiny", "retrieval", (0,), (0.0, 100.0), chat=False, max_new_tokens=3)
    log = tmp_path / "tiny-retrieval.trials.jsonl"
    fresh = run_grid(model, tokenizer, settings, log, progress=False)
    assert len(fresh) == 6 and [r["id"] for r in fresh] == [s.id for s in settings.trials()]

    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:3]) + "\n")  # the log of a run stopped after 2 trials
    calls = []

    def counting_trial(*args, **kwargs):
        calls.append(args[4].id)
        return trial.run_trial(*args, **kwargs)

    monkeypatch.setattr(run, "run_trial", counting_trial)
    resumed = run_grid(model, tokenizer, settings, log, progress=False)
    assert calls == [spec.id for spec in settings.trials()[2:]]
    assert strip_timing(resumed) == strip_timing(fresh)
    assert len(read_trial_log(log, settings.header())) == 6

    calls.clear()
    run_grid(model, tokenizer, settings, log, progress=False)
    assert calls == []


def test_run_settings_validate():
    with pytest.raises(ValueError, match="kind"):
        RunSettings("m", "copy", (0,), (0.0,), False)
    with pytest.raises(ValueError, match="depths"):
        RunSettings("m", "retrieval", (0,), (120.0,), False)
    with pytest.raises(ValueError, match="lengths"):
        RunSettings("m", "retrieval", (), (0.0,), False)


def synthetic_records():
    scores = [[[0.5, 0.0, 0.25, 1.0], [0.0, 0.0, 0.125, 0.75]], [[0.25, 0.0, 0.0, 1.0], [0.0, 0.0, 0.375, 0.25]]]
    return [{"id": f"t{i}", "accepted": ok, "scores": s} for i, (s, ok) in enumerate(zip([*scores, scores[0]],
                                                                                       (True, True, False)))]


def test_score_file_round_trips_through_the_methods_loader(tmp_path):
    lists = head_score_lists(synthetic_records(), LAYERS, HEADS)
    assert list(lists) == [f"{layer}-{head}" for layer in range(LAYERS) for head in range(HEADS)]
    assert lists["0-0"] == [0.5, 0.25] and lists["1-2"] == [0.125, 0.375]  # accepted trials only, in order
    path = tmp_path / "scores.json"
    write_json(path, lists)
    assert len(path.read_text().splitlines()) == 1
    loaded = load_head_scores(path, ModelShape(LAYERS, HEADS, KV_HEADS, HEAD_DIM))
    assert loaded.dtype == torch.float64
    torch.testing.assert_close(loaded, mean_table(lists, LAYERS, HEADS))
    assert loaded[0, 3] == 1.0 and loaded[0, 1] == 0.0


def test_score_file_shape_errors(tmp_path):
    with pytest.raises(ValueError, match="2 layers x 4 heads; the model has 2 x 5"):
        head_score_lists(synthetic_records(), LAYERS, HEADS + 1)
    path = tmp_path / "scores.json"
    write_json(path, head_score_lists(synthetic_records(), LAYERS, HEADS))
    with pytest.raises(ValueError, match="2 layers x 4 heads but the model has 3 layers x 4"):
        load_head_scores(path, ModelShape(3, HEADS, KV_HEADS, HEAD_DIM))


def score_heads(argv):
    parser = argparse.ArgumentParser(prog="raggedkv")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["score-heads", *argv])
    return args.func(args)


@pytest.mark.parametrize("kind", ["retrieval", "reasoning", "semantic"])
def test_score_heads_command_writes_the_three_files(tiny_dir, tmp_path, monkeypatch, kind):
    monkeypatch.setattr(trial, "accepted", lambda metric: True)  # a random model never answers right
    argv = ["--model", str(tiny_dir), "--kind", kind, "--lengths", "0", "400", "--depths", "0", "100",
            "--out", str(tmp_path), "--max-new-tokens", "3", "--no-progress"]
    assert score_heads(argv) == 0
    stem = f"{tiny_dir.name}-{kind}"
    scores = json.loads((tmp_path / f"{stem}.json").read_text())
    meta = json.loads((tmp_path / f"{stem}.meta.json").read_text())
    trials = len(needles_for(kind)) * 2 * 2
    assert len(scores) == LAYERS * HEADS and all(len(v) == trials for v in scores.values())
    assert meta["acceptance"]["accepted"] == meta["acceptance"]["trials"] == trials
    assert meta["accepted_trials"] == [s.id for s in RunSettings("m", kind, (0, 400), (0.0, 100.0), False).trials()]
    assert meta["command"].startswith(f"raggedkv score-heads --model {tiny_dir} --kind {kind} --lengths 0 400")
    assert {"versions", "date", "grid", "run", "summary"} <= meta.keys()
    count = len(needles_for(kind))  # 4 trials each; the split puts the even-numbered needles first
    assert meta["summary"]["split_half"]["trials"] == [4 * ((count + 1) // 2), 4 * (count // 2)]
    assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    load_head_scores(tmp_path / f"{stem}.json", ModelShape(LAYERS, HEADS, KV_HEADS, HEAD_DIM))

    # the same command again reuses every logged trial and reproduces the file
    monkeypatch.setattr(run, "run_trial", lambda *args: pytest.fail("a logged trial was run again"))
    assert score_heads(argv) == 0
    assert json.loads((tmp_path / f"{stem}.json").read_text()) == scores


def test_score_heads_rejects_lengths_beyond_the_context(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="--lengths 4000"):
        score_heads(["--model", str(tiny_dir), "--kind", "retrieval", "--lengths", "4000", "--out", str(tmp_path)])


def test_score_heads_refuses_a_trial_log_of_other_settings_before_loading_the_weights(tiny_dir, tmp_path,
                                                                                    monkeypatch):
    argv = ["--model", str(tiny_dir), "--kind", "retrieval", "--lengths", "0", "--depths", "0", "--out",
            str(tmp_path), "--max-new-tokens", "3", "--no-progress"]
    monkeypatch.setattr(trial, "accepted", lambda metric: True)
    assert score_heads(argv) == 0
    log = tmp_path / f"{tiny_dir.name}-retrieval.trials.jsonl"
    before = log.read_text()
    monkeypatch.setattr("raggedkv.engine.models.load_model", lambda *args: pytest.fail("the weights were loaded"))
    with pytest.raises(ValueError, match=r"was written with other settings \(depths, lengths\)"):
        score_heads([*argv[:4], "--lengths", "400", "--depths", "100", *argv[8:]])
    assert log.read_text() == before  # left untouched
