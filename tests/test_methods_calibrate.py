"""`calibrate-layers` on tiny random Llama models: the error against a direct computation, the file, the CLI."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from raggedkv.engine.methods import get_method
from raggedkv.engine.methods.calibrate import calibrate_layers, prompt_errors
from raggedkv.engine.methods.commands import register
from raggedkv.engine.models import model_shape
from raggedkv.kernels.reference import window_scores_ref
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

VOCAB = 64


def tiny_llama(layers: int = 2) -> LlamaForCausalLM:
    """A random tiny Llama without an end token, so decoding always runs `max_new_tokens` steps."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=None)
    return LlamaForCausalLM(config).eval()


class CharTokenizer:
    """Enough of a tokenizer for `calibrate_layers`: one id per character."""

    def __call__(self, text: str, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor([[ord(c) % VOCAB for c in text]])}


def direct_error(model: LlamaForCausalLM, ids: torch.Tensor, budget: int, window: int = 8) -> float:
    """The one decode step of a one-layer model, by hand: ||o_proj(O') - o_proj(O)|| / (||o_proj(O)|| + 1e-5)."""
    attn, n = model.model.layers[0].self_attn, ids.shape[1]
    with torch.no_grad():
        next_token = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        full_ids = torch.cat([ids, next_token], dim=1)
        hidden = model.model.layers[0].input_layernorm(model.model.embed_tokens(full_ids))
        q = attn.q_proj(hidden).view(1, n + 1, 4, 8).transpose(1, 2)
        k = attn.k_proj(hidden).view(1, n + 1, 2, 8).transpose(1, 2)
        v = attn.v_proj(hidden).view(1, n + 1, 2, 8).transpose(1, 2)
        cos, sin = model.model.rotary_emb(hidden, torch.arange(n + 1)[None])
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        scores = window_scores_ref(q[0, :, n - window:n], k[0, :, :n], window_reduce="sum", group_reduce="sum",
                                   pool="avg", pool_size=5, qo_head_weights=torch.full((4,), 0.25)).sum(0)
        keep = torch.zeros(n + 1, dtype=torch.bool)
        keep[scores.topk(budget - window).indices] = True
        keep[n - window:] = True
        keys, values = k[0].repeat_interleave(2, 0), v[0].repeat_interleave(2, 0)
        logits = q[0, :, n:] @ keys.transpose(1, 2) / 8 ** 0.5
        full = torch.softmax(logits, -1) @ values
        part = torch.softmax(logits.masked_fill(~keep, float("-inf")), -1) @ values
        out_full = attn.o_proj(full.transpose(0, 1).reshape(1, -1))
        out_part = attn.o_proj(part.transpose(0, 1).reshape(1, -1))
    return float((out_part - out_full).norm() / (out_full.norm() + 1e-5))


def test_prompt_error_matches_a_direct_computation():
    model = tiny_llama(layers=1)
    ids = torch.randint(0, VOCAB, (1, 40))
    errors = prompt_errors(model, ids, torch.full((1, 4), 0.25), budget=16, max_new_tokens=2)
    assert errors.shape == (1,) and errors[0] > 0
    assert errors[0].item() == pytest.approx(direct_error(model, ids, 16), rel=1e-4)
    assert model.config._attn_implementation == "sdpa", "attention implementation restored"


def test_calibration_does_not_change_generation():
    model = tiny_llama()
    ids = torch.randint(0, VOCAB, (1, 30))
    with torch.no_grad():
        expected = model(ids).logits
    prompt_errors(model, ids, torch.full((2, 4), 0.25), budget=16, max_new_tokens=3)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, expected)


def test_calibrate_layers_file_feeds_compresskv():
    model = tiny_llama(layers=3)
    prompts = {"qa": ["a prompt that is long enough to compress " * 2], "code": ["def f(x): return x * 2 + 1 " * 3]}
    heads = {f"{l}-{h}": [float(h)] for l in range(3) for h in range(4)}
    result = calibrate_layers(model, CharTokenizer(), prompts, budget=16, max_new_tokens=4, progress=False,
                              head_scores=heads, first_k=2)
    assert set(result) == {"qa", "code", "avg_score", "meta"}
    assert len(result["avg_score"]) == 3 and sum(result["avg_score"]) == pytest.approx(1.0)
    assert all(score >= 0 for score in result["avg_score"])
    for name in ("qa", "code"):
        assert sum(result[name]) == pytest.approx(1.0)
    expected = torch.tensor([result["qa"], result["code"]]).mean(0)
    assert torch.allclose(torch.tensor(result["avg_score"]), expected / expected.sum())
    method = get_method("compresskv", layer_scores=result, head_scores=heads)
    assert int(method.plan(model_shape(model.config), 500, 64).sum()) == 64 * 3 * 2


def test_calibrate_layers_rejects_prompts_that_fit_the_budget():
    with pytest.raises(ValueError, match="no eviction error"):
        calibrate_layers(tiny_llama(), CharTokenizer(), ["short"], budget=16, max_new_tokens=3, progress=False)


def test_cli_calibrate_layers_end_to_end(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(folder)
    vocab = {chr(97 + i): i for i in range(26)} | {"[UNK]": 26}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(folder)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "abcdefghijklmnopqrstuvwxyz" * 2}) + "\n")
    out = tmp_path / "scores" / "layers.json"

    parser = argparse.ArgumentParser(prog="raggedkv")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["calibrate-layers", "--model", str(folder), "--prompts-file", str(prompts),
                              "--budget", "16", "--max-new-tokens", "3", "--out", str(out), "--no-progress"])
    assert args.func(args) == 0
    written = json.loads(out.read_text())
    assert len(written["avg_score"]) == 2 and written["meta"]["model"] == str(folder)
    assert "wrote layer scores of 2 layers" in capsys.readouterr().out
