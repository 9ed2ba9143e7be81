"""End-to-end generation: the raggedkv Engine per method vs full-cache transformers `generate` (SDPA).

    python -m bench.bench_e2e [--quick|--full] [--providers hf_full snapkv ...] [--models ...] [--prompts ...]
                              [--kv-size 128] [--new-tokens 512] [--time-budget-s S] [--out DIR] [--dry-run]

Models are Llama-3-8B- and Mistral-7B-shaped with random bf16 weights (transformers configs instantiated on the
GPU; speed and memory do not depend on the weights, so nothing is downloaded). Batch 1, a random prompt of
`prompt` tokens, `new_tokens` greedy tokens (EOS disabled, so every run generates all of them).

Per (model, prompt, provider), after one warm-up generation per (model, provider):
  ttft_ms        wall time of a generation of 1 token (prefill + compression + first token), CUDA synchronised;
  ms/token       (time of the `new_tokens` generation - ttft) / (new_tokens - 1): the decode step;
  tok/s          its inverse; speedup = tok/s / tok/s of hf_full at the same prompt;
  peak_GiB       torch.cuda.max_memory_allocated during the `new_tokens` generation (weights included);
  kv_MiB         KV-cache bytes the provider holds after prefill (engine stats; hf_full: the full cache).
A config that runs out of memory is recorded as `oom`; `--time-budget-s` skips what would start after it.
`--dry-run`: a tiny random Llama and Mistral on the CPU (torch backend), checking that every method generates all
tokens and that method `full` gives the same greedy tokens as transformers.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from bench import _harness as H

BASELINE = "hf_full"

# Architecture of each model shape; vocabularies as released (Llama-3: 128256, Mistral-7B-v0.3: 32768).
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama3-8b": ("llama", dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5,
                                max_position_embeddings=131072 + 1024,
                                rope_parameters={"rope_type": "default", "rope_theta": 500000.0})),
    "mistral-7b": ("mistral", dict(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5,
                                   max_position_embeddings=131072 + 1024, sliding_window=None,
                                   rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    "tiny-llama": ("llama", dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)),
    "tiny-mistral": ("mistral", dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                                     sliding_window=None)),
}
# Real checkpoints with the same shapes, named so that HeadKV/CompressKV can find packaged head scores.
MODEL_NAMES = {"llama3-8b": "meta-llama/Meta-Llama-3-8B-Instruct", "mistral-7b": "mistralai/Mistral-7B-Instruct-v0.2"}

GRIDS = {  # mode -> models, prompts, providers, kv sizes, new tokens
    "dry": (["tiny-llama", "tiny-mistral"], [96], [BASELINE, "full", "streamingllm", "snapkv", "pyramidkv",
                                                   "ada-snapkv", "headkv-r", "headkv-r2", "compresskv"], [32], 6),
    "quick": (["llama3-8b"], [4096, 32768], [BASELINE, "snapkv", "headkv-r2"], [128], 512),
    "full": (["llama3-8b", "mistral-7b"], [4096, 8192, 16384, 32768, 65536, 131072],  # 64K/128K: where memory allows
             [BASELINE, "snapkv", "pyramidkv", "ada-snapkv", "headkv-r2"], [128], 512),
}


def provider_ids() -> list[str]:
    from raggedkv.engine.methods import METHODS

    return [BASELINE, *METHODS]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), help="model shapes (default: per mode)")
    parser.add_argument("--prompts", nargs="+", type=int, help="prompt lengths in tokens (default: per mode)")
    parser.add_argument("--kv-size", nargs="+", type=int, help="average tokens kept per head (default 128)")
    parser.add_argument("--new-tokens", type=int, help="tokens generated per run (default 512)")
    parser.add_argument("--backend", default="auto", help="engine backend: auto (triton on CUDA), triton, torch")
    parser.add_argument("--time-budget-s", type=float, help="skip configs that would start after this many seconds")


# ---- models and runners


def build_model(name: str, device: torch.device, dtype: torch.dtype):
    """A randomly initialised HF causal LM of the named shape, on `device`, that never stops at EOS."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

    family, kwargs = MODELS[name]
    config = (LlamaConfig if family == "llama" else MistralConfig)(**kwargs, bos_token_id=1, eos_token_id=None,
                                                                   pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    model.generation_config.pad_token_id = 0
    return model


Runner = Callable[[torch.Tensor, int], tuple[torch.Tensor, dict[str, Any]]]  # (prompt ids [1, n], new) -> tokens


def hf_runner(model) -> Runner:
    """transformers' own generate: full cache (DynamicCache), SDPA attention, greedy."""
    def generate(ids: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, dict[str, Any]]:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False)
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * ids.shape[1] * head_dim * model.dtype.itemsize
        return out[0, ids.shape[1]:], {"kv_bytes": kv_bytes}
    return generate


def _scalars(stats: Any) -> dict[str, Any]:
    """The JSON-able scalar fields of the engine's `GenerationStats` (a dataclass)."""
    return {k: v for k, v in asdict(stats).items() if isinstance(v, (int, float, str, bool)) or v is None}


def method_scores(model, model_key: str, method: str) -> tuple[dict[str, Any], str | None]:
    """Score-file parameters for the methods that need offline scores (HeadKV, CompressKV), and what they are.

    A packaged file for the real checkpoint of this shape is used when the engine ships one (the model is then named
    after that checkpoint); otherwise synthetic scores with a HeadKV-like skew (log-normal head importance, sigma
    1.5, seed 0): speed and memory depend on how skewed the budgets are, not on which heads are important.
    """
    from raggedkv.engine.methods import method_parameters
    from raggedkv.engine.methods.head_scores import packaged_score_file

    accepted = method_parameters(method)
    if "head_scores" not in accepted:
        return {}, None
    name = MODEL_NAMES.get(model_key)
    kinds = {"headkv-r": "retrieval-heads", "headkv-r2": "retrieval-reasoning-heads",
             "compresskv": "semantic-retrieval-heads"}
    packaged = packaged_score_file(name, kinds[method]) if name and method in kinds else None
    if packaged is not None:
        model.config._name_or_path = name
        return {}, f"packaged {packaged.name}"
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    importance = torch.exp(1.5 * torch.randn(cfg.num_hidden_layers, cfg.num_attention_heads, generator=gen))
    params: dict[str, Any] = {"head_scores": {f"{layer}-{head}": [float(importance[layer, head])]
                                              for layer in range(cfg.num_hidden_layers)
                                              for head in range(cfg.num_attention_heads)}}
    if "layer_scores" in accepted:
        params["layer_scores"] = {"avg_score": (0.5 + torch.rand(cfg.num_hidden_layers, generator=gen)).tolist()}
    return params, "synthetic (log-normal sigma 1.5, seed 0)"


def engine_runner(model, model_key: str, method: str, kv_size: int, backend: str) -> Runner:
    """The raggedkv Engine with `method` on the same (already loaded) model, fed token ids."""
    from raggedkv.engine import Engine

    params, scores = method_scores(model, model_key, method)
    engine = Engine.from_model(model, None, method, backend=backend, **params)

    def generate(ids: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, dict[str, Any]]:
        result = engine.generate_ids([ids[0]], kv_size=kv_size, max_new_tokens=new_tokens)[0]
        stats = _scalars(result.stats) | {"kv_bytes": result.stats.kv_bytes_kept, "head_scores": scores}
        return torch.tensor(result.token_ids), stats
    return generate


# ---- measurement


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def measure(run: Runner, ids: torch.Tensor, new_tokens: int, device: torch.device) -> dict[str, Any]:
    """TTFT from a 1-token generation, then the full generation for the decode rate and the peak memory."""
    ttft, _ = _timed(lambda: run(ids, 1), device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    total, (tokens, stats) = _timed(lambda: run(ids, new_tokens), device)
    generated = int(tokens.numel())
    decode_s = total - ttft
    row = {"ttft_ms": ttft * 1e3, "total_s": total, "generated": generated,
           "ms_per_token": decode_s * 1e3 / (generated - 1) if generated > 1 and decode_s > 0 else None,
           "peak_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
           "kv_bytes": stats.get("kv_bytes"), "stats": stats}
    row["decode_tok_s"] = 1e3 / row["ms_per_token"] if row["ms_per_token"] else None
    return row


def check_only(run: Runner, ids: torch.Tensor, new_tokens: int) -> dict[str, Any]:
    """Dry run: one generation, no timing (a CPU wall clock of a tiny model is no benchmark)."""
    tokens, stats = run(ids, new_tokens)
    return {"generated": int(tokens.numel()), "tokens": tokens.tolist(), "kv_bytes": stats.get("kv_bytes"),
            "stats": stats}


COLUMNS = [
    ("ttft_ms", lambda r: r.get("ttft_ms"), "{:.1f}"),
    ("ms/token", lambda r: r.get("ms_per_token"), "{:.2f}"),
    ("tok/s", lambda r: r.get("decode_tok_s"), "{:.1f}"),
    ("speedup", lambda r: r.get("speedup"), "{:.2f}"),
    ("peak_GiB", lambda r: None if r.get("peak_bytes") is None else r["peak_bytes"] / 2**30, "{:.2f}"),
    ("kv_MiB", lambda r: None if r.get("kv_bytes") is None else r["kv_bytes"] / H.MIB, "{:.1f}"),
    ("check", lambda r: r.get("check"), "{}"),
]


def run(argv: list[str] | None = None) -> H.Report:
    args = H.parse_args("e2e", "engine.generate vs full-cache transformers generate", argv, provider_ids(),
                        _add_arguments, kernel=False)
    if not args.dry_run and not H.has_cuda():
        print(H.no_gpu_message("e2e", args.out), file=sys.stderr)
        return H.Report(2)
    with H.one_cpu_thread(args.dry_run and not H.has_cuda()):
        return _run(args)


def _run(args: argparse.Namespace) -> H.Report:
    device = torch.device("cuda" if H.has_cuda() else "cpu")
    models, prompts, providers, kv_sizes, new_tokens = GRIDS[args.mode]
    models, prompts = args.models or models, args.prompts or prompts
    providers = args.providers or providers
    providers = [BASELINE] + [p for p in providers if p != BASELINE] if BASELINE in providers else providers
    kv_sizes, new_tokens = args.kv_size or kv_sizes, args.new_tokens or new_tokens
    dtype = torch.bfloat16 if device.type == "cuda" and not args.dry_run else torch.float32  # dry run: exact tokens
    backend = args.backend if device.type == "cuda" else "torch"

    env = H.environment(args.command)
    timing = {"method": "wall clock, torch.cuda.synchronize around each generate, one run per config after one "
                        "warm-up generation per (model, provider)", "ttft": "generate(max_new_tokens=1)",
              "decode": "(generate(new_tokens) - ttft) / (new_tokens - 1)", "dtype": str(dtype).removeprefix("torch."),
              "backend": backend, "batch": 1}
    print(H.header_line("e2e", env, f"timing: wall clock, synchronised, 1 run per config | {timing['dtype']} | "
                                    f"engine backend {backend} | batch 1"))
    print(f"# engine.generate per method vs {BASELINE} = transformers generate (SDPA, full DynamicCache); "
          "random weights, EOS disabled")
    configs = [{"model": m, "prompt": n, "kv_size": kv, "new_tokens": new_tokens}
               for m in models for n in prompts for kv in kv_sizes]
    columns = H.config_columns(configs) + [("provider", lambda r: r["provider"], "{}")] + COLUMNS
    table = H.Table(columns, H.config_widths(configs) | {"provider": max(len(p) for p in providers)})
    table.print_header()

    started, rows, problems = time.monotonic(), [], []
    for model_key in models:
        model = build_model(model_key, device, dtype)
        runners: dict[tuple[str, int], Runner] = {}
        baseline_rows: dict[int, dict[str, Any]] = {}  # hf_full does not depend on kv_size: measured once per prompt
        for config in [c for c in configs if c["model"] == model_key]:
            ids = torch.randint(3, model.config.vocab_size, (1, config["prompt"]),
                                generator=torch.Generator().manual_seed(config["prompt"])).to(device)
            config_rows = []
            for provider in providers:
                row: dict[str, Any] = {"config": dict(config), "provider": provider}
                if provider == BASELINE and config["prompt"] in baseline_rows:
                    row.update(baseline_rows[config["prompt"]], shared=True)
                elif args.time_budget_s and time.monotonic() - started > args.time_budget_s:
                    row.update(check="skipped", error=f"time budget of {args.time_budget_s:g} s spent")
                else:
                    row.update(_evaluate(model, model_key, provider, config, ids, runners, args, backend, device))
                    if provider == BASELINE:
                        baseline_rows[config["prompt"]] = {k: v for k, v in row.items() if k not in ("config",)}
                    if row["check"] not in ("ok", "oom"):
                        problems.append(f"{provider} on {config}: {row.get('error')}")
                config_rows.append(row)
            _finish(config_rows, args.dry_run, problems)
            for row in config_rows:
                table.print_row(row)
            rows.extend(config_rows)
        del model, runners
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    doc = H.build_doc("e2e", env, timing, rows, mode=args.mode, baseline=BASELINE,
                      models={m: MODELS[m][1] | {"family": MODELS[m][0]} for m in models})
    for problem in problems:
        print(f"! {problem}", file=sys.stderr)
    if args.dry_run:
        text = json.dumps(doc)
        print(f"# dry run: {sum(r['check'] == 'ok' for r in rows)}/{len(rows)} runs ok; nothing written "
              f"({len(text)} bytes of JSON built in memory)")
        return H.Report(1 if problems else 0, doc)
    path = H.write_json(doc, args.out)
    print(f"# wrote {path}")
    return H.Report(1 if problems else 0, doc, path)


def _evaluate(model, model_key: str, provider: str, config: dict[str, Any], ids: torch.Tensor,
              runners: dict[tuple[str, int], Runner], args: argparse.Namespace, backend: str,
              device: torch.device) -> dict[str, Any]:
    """One (config, provider): build its runner once (with a warm-up on GPUs), then check or measure it."""
    new_tokens = config["new_tokens"]
    row: dict[str, Any] = {}
    try:
        key = (provider, config["kv_size"])
        if key not in runners:
            runners[key] = (hf_runner(model) if provider == BASELINE else
                            engine_runner(model, model_key, provider, config["kv_size"], backend))
            if not args.dry_run:  # warm-up: compiles kernels, initialises cuBLAS
                runners[key](ids[:, : min(config["prompt"], 1024)], 4)
        row = check_only(runners[key], ids, new_tokens) if args.dry_run else measure(runners[key], ids, new_tokens,
                                                                                       device)
        row["check"] = "ok" if row["generated"] == new_tokens else "fail"
        if row["check"] == "fail":
            row["error"] = f"generated {row['generated']} tokens, not {new_tokens}"
    except torch.cuda.OutOfMemoryError as exc:
        row = {"check": "oom", "error": str(exc).splitlines()[0]}
    except Exception as exc:  # noqa: BLE001 - report and go on with the other providers
        row = {"check": "error", "error": f"{type(exc).__name__}: {exc}"}
    if row["check"] == "oom":
        gc.collect()  # the exception's frames are gone: free what they held
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _finish(rows: list[dict[str, Any]], dry_run: bool, problems: list[str]) -> None:
    """Speedups vs the baseline; in a dry run (fp32), method `full` must reproduce transformers' tokens."""
    base = next((r for r in rows if r["provider"] == BASELINE), None)
    for r in rows:
        if base and base.get("decode_tok_s") and r.get("decode_tok_s"):
            r["speedup"] = r["decode_tok_s"] / base["decode_tok_s"]
        if dry_run and r["provider"] == "full" and base and r.get("tokens") is not None:
            if r["tokens"] != base.get("tokens"):
                r["check"] = "fail"
                problems.append(f"method full on {r['config']}: tokens {r['tokens']} != transformers "
                                f"{base.get('tokens')}")


def main(argv: list[str] | None = None) -> int:
    return run(argv).exit_code


if __name__ == "__main__":
    raise SystemExit(main())
