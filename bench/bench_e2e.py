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
  kv_MiB         KV-cache bytes the provider holds after prefill (engine stats; hf_full: the full cache);
  scores         the score files HeadKV / CompressKV read (`harness.scores`): `packaged` (the engine ships them for
                 the shape's released checkpoint), `synthetic` (random, of the shape's size) or `-` (none read);
                 the JSON's `score_files` says which file or draw each constructor parameter got.
A config that runs out of memory is recorded as `oom`; `--time-budget-s` skips what would start after it.
`--dry-run`: a tiny random Llama and Mistral on the CPU (torch backend), checking that every method generates all
tokens and that method `full` gives the same greedy tokens as transformers; then, without weights, every method's
budgets planned at the Llama-3-8B, Mistral-7B and SmolLM2-135M shapes with the scores the bench gives it there
(rows with `new_tokens` 0), so a method that cannot be built at a real shape shows as an `error` row.
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

from bench.harness.cli import Report, no_gpu_message, parse_args
from bench.harness.environment import environment, has_cuda, header_line, one_cpu_thread
from bench.harness.results import build_doc, write_json
from bench.harness.scores import MethodScores, method_scores
from bench.harness.shapes import MODELS, attention_shape, hf_config
from bench.harness.table import MIB, Table, config_columns, config_widths
from raggedkv.engine.backend import BACKEND_NAMES
from raggedkv.engine.compress import plan_budgets
from raggedkv.engine.methods import METHODS, get_method
from raggedkv.engine.methods.base import ModelShape
from raggedkv.engine.models import model_shape

BASELINE = "hf_full"
PLAN_KV_SIZE = 128
# Dry run only, after the tiny generations: every method planned at the shapes the GPU grids run (scores as the
# bench gives them there) and at SmolLM2-135M's, whose score files the engine ships. new_tokens 0: plan only.
PLAN_CONFIGS = [{"model": m, "prompt": n, "kv_size": PLAN_KV_SIZE, "new_tokens": 0}
                for m, n in (("llama3-8b", 32768), ("mistral-7b", 32768), ("smollm2-135m", 8192))]

GRIDS = {  # mode -> models, prompts, providers, kv sizes, new tokens
    "dry": (["tiny-llama", "tiny-mistral"], [96], [BASELINE, "full", "streamingllm", "snapkv", "pyramidkv",
                                                   "ada-snapkv", "headkv-r", "headkv-r2", "compresskv"], [32], 6),
    "quick": (["llama3-8b"], [4096, 32768], [BASELINE, "snapkv", "headkv-r2"], [128], 512),
    "full": (["llama3-8b", "mistral-7b"], [4096, 8192, 16384, 32768, 65536, 131072],  # 64K/128K: where memory allows
             [BASELINE, "snapkv", "pyramidkv", "ada-snapkv", "headkv-r2"], [128], 512),
}


def provider_ids() -> list[str]:
    return [BASELINE, *METHODS]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), help="model shapes (default: per mode)")
    parser.add_argument("--prompts", nargs="+", type=int, help="prompt lengths in tokens (default: per mode)")
    parser.add_argument("--kv-size", nargs="+", type=int, help="average tokens kept per head (default 128)")
    parser.add_argument("--new-tokens", type=int, help="tokens generated per run (default 512)")
    parser.add_argument("--backend", default="auto", choices=BACKEND_NAMES,
                        help="engine backend on CUDA (default auto: triton); the CPU always uses torch")
    parser.add_argument("--time-budget-s", type=float, help="skip configs that would start after this many seconds")


# ---- models and runners


def build_model(name: str, device: torch.device, dtype: torch.dtype):
    """A randomly initialised HF causal LM of the named shape (`shapes.MODELS`), on `device`, that never stops at
    EOS."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config(name), dtype=dtype, attn_implementation="sdpa")
    model.eval()
    model.generation_config.pad_token_id = 0
    return model


Runner = Callable[[torch.Tensor, int], tuple[torch.Tensor, dict[str, Any]]]  # (prompt ids [1, n], new) -> tokens


def full_cache_bytes(shape: ModelShape, tokens: int, dtype: torch.dtype) -> int:
    """Bytes of K and V for `tokens` tokens in every KV head of every layer."""
    return 2 * shape.num_layers * shape.num_kv_heads * tokens * shape.head_dim * dtype.itemsize


def hf_runner(model) -> Runner:
    """transformers' own generate: full cache (DynamicCache), SDPA attention, greedy."""
    def generate(ids: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, dict[str, Any]]:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False)
        return out[0, ids.shape[1]:], {"kv_bytes": full_cache_bytes(model_shape(model.config), ids.shape[1],
                                                                    model.dtype)}
    return generate


def _scalars(stats: Any) -> dict[str, Any]:
    """The JSON-able scalar fields of the engine's `GenerationStats` (a dataclass)."""
    return {k: v for k, v in asdict(stats).items() if isinstance(v, (int, float, str, bool)) or v is None}


def engine_runner(model, method: str, scores: MethodScores, kv_size: int, backend: str) -> Runner:
    """The raggedkv Engine with `method` (built with `scores`) on the same (already loaded) model, fed token ids."""
    from raggedkv.engine import Engine

    engine = Engine.from_model(model, None, method, backend=backend, **scores.params)

    def generate(ids: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, dict[str, Any]]:
        result = engine.generate_ids([ids[0]], kv_size=kv_size, max_new_tokens=new_tokens)[0]
        stats = _scalars(result.stats) | {"kv_bytes": result.stats.kv_bytes_kept}
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
    ("kv_MiB", lambda r: None if r.get("kv_bytes") is None else r["kv_bytes"] / MIB, "{:.1f}"),
    ("scores", lambda r: r.get("scores"), "{}"),
    ("check", lambda r: r.get("check"), "{}"),
]


def run(argv: list[str] | None = None) -> Report:
    args = parse_args("e2e", "engine.generate vs full-cache transformers generate", argv, provider_ids(),
                        _add_arguments, kernel=False)
    if not args.dry_run and not has_cuda():
        print(no_gpu_message("e2e", args.out), file=sys.stderr)
        return Report(2)
    with one_cpu_thread(args.dry_run and not has_cuda()):
        return _run(args)


def _run(args: argparse.Namespace) -> Report:
    device = torch.device("cuda" if has_cuda() else "cpu")
    models, prompts, providers, kv_sizes, new_tokens = GRIDS[args.mode]
    models, prompts = args.models or models, args.prompts or prompts
    providers = args.providers or providers
    providers = [BASELINE] + [p for p in providers if p != BASELINE] if BASELINE in providers else providers
    kv_sizes, new_tokens = args.kv_size or kv_sizes, args.new_tokens or new_tokens
    dtype = torch.bfloat16 if device.type == "cuda" and not args.dry_run else torch.float32  # dry run: exact tokens
    backend = args.backend if device.type == "cuda" else "torch"

    env = environment(args.command)
    timing = {"method": "wall clock, torch.cuda.synchronize around each generate, one run per config after one "
                        "warm-up generation per (model, provider)", "ttft": "generate(max_new_tokens=1)",
              "decode": "(generate(new_tokens) - ttft) / (new_tokens - 1)", "dtype": str(dtype).removeprefix("torch."),
              "backend": backend, "batch": 1}
    print(header_line("e2e", env, f"timing: wall clock, synchronised, 1 run per config | {timing['dtype']} | "
                                    f"engine backend {backend} | batch 1"))
    print(f"# engine.generate per method vs {BASELINE} = transformers generate (SDPA, full DynamicCache); "
          "random weights, EOS disabled")
    configs = [{"model": m, "prompt": n, "kv_size": kv, "new_tokens": new_tokens}
               for m in models for n in prompts for kv in kv_sizes]
    plans = PLAN_CONFIGS if args.dry_run else []
    columns = config_columns(configs + plans) + [("provider", lambda r: r["provider"], "{}")] + COLUMNS
    table = Table(columns, config_widths(configs + plans) | {"provider": max(len(p) for p in providers)})
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
    for config in plans:
        for provider in providers:
            row = {"config": dict(config), "provider": provider, **plan_only(config, provider)}
            if row["check"] != "ok":
                problems.append(f"{provider} on {config}: {row.get('error')}")
            table.print_row(row)
            rows.append(row)

    doc = build_doc("e2e", env, timing, rows, mode=args.mode, baseline=BASELINE,
                      models={m: MODELS[m][1] | {"family": MODELS[m][0]} for m in models})
    for problem in problems:
        print(f"! {problem}", file=sys.stderr)
    if args.dry_run:
        text = json.dumps(doc)
        print(f"# dry run: {sum(r['check'] == 'ok' for r in rows)}/{len(rows)} rows ok (generations on tiny models, "
              f"budget plans at real shapes); nothing written "
              f"({len(text)} bytes of JSON built in memory)")
        return Report(1 if problems else 0, doc)
    path = write_json(doc, args.out)
    print(f"# wrote {path}")
    return Report(1 if problems else 0, doc, path)


def _evaluate(model, model_key: str, provider: str, config: dict[str, Any], ids: torch.Tensor,
              runners: dict[tuple[str, int], Runner], args: argparse.Namespace, backend: str,
              device: torch.device) -> dict[str, Any]:
    """One (config, provider): build its runner once (with a warm-up on GPUs), then check or measure it."""
    new_tokens = config["new_tokens"]
    row: dict[str, Any] = {}
    scores: MethodScores | None = None
    try:
        if provider != BASELINE:
            scores = method_scores(model_key, provider)
        key = (provider, config["kv_size"])
        if key not in runners:
            runners[key] = (hf_runner(model) if scores is None else
                            engine_runner(model, provider, scores, config["kv_size"], backend))
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
    return row | {"scores": scores.label if scores else "-", "score_files": scores.describe() if scores else None}


def plan_only(config: dict[str, Any], provider: str) -> dict[str, Any]:
    """A dry-run row at a real shape: the method built with the score files the bench gives it there, one prompt's
    budgets planned and checked (no weights, no generation); `kv_bytes` = bf16 K and V those budgets keep."""
    shape = attention_shape(config["model"])
    kv_bytes_per_token = full_cache_bytes(shape, 1, torch.bfloat16) // (shape.num_layers * shape.num_kv_heads)
    if provider == BASELINE:
        return {"check": "ok", "kv_bytes": full_cache_bytes(shape, config["prompt"], torch.bfloat16), "scores": "-",
                "score_files": None}
    try:
        scores = method_scores(config["model"], provider)
        budgets = plan_budgets(get_method(provider, **scores.params), shape, config["prompt"], config["kv_size"])
    except Exception as exc:  # noqa: BLE001 - the row says what failed; the other methods still run
        return {"check": "error", "error": f"{type(exc).__name__}: {exc}"}
    kept = int(budgets.sum())
    wanted = (config["prompt"] if provider == "full" else config["kv_size"]) * shape.num_layers * shape.num_kv_heads
    row = {"check": "ok" if kept == wanted else "fail", "kv_bytes": kept * kv_bytes_per_token,
           "scores": scores.label, "score_files": scores.describe()}
    if kept != wanted:
        row["error"] = f"the budgets keep {kept} tokens, not {wanted}"
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
