"""End-to-end generation at serving scale: the raggedkv engine per method (CUDA-graph and eager decode) vs
transformers' own `generate` with its static and its dynamic full cache (SDPA).

    python -m bench.bench_e2e [--quick|--full] [--providers hf_static snapkv ...] [--models ...] [--prompts ...]
                              [--batches 1 8 32 max] [--kv-size 128 512] [--modes graph eager] [--new-tokens N]
                              [--max-batch N] [--time-budget-s S] [--out DIR] [--dry-run]

Models are Llama-3-8B- (or Mistral-7B-) shaped with random bf16 weights (transformers configs instantiated on the
GPU; speed and memory do not depend on the weights, so nothing is downloaded). One random prompt per length
(`--prompts`, in the order given: 32K first), greedy, EOS disabled, so every run generates all `new_tokens`.

Batches are filled with identical prefills (`fill` column `copies`, `bench/e2e/fill.py`): the prompt is prefilled
and compressed once at batch 1 and its cache rows are copied into every sequence (transformers: its cache holding
`n - 1` prompt tokens, copied). `max` is the largest batch that fits, computed from the measured per-sequence bytes
of the two largest batches run before it (`bench/e2e/measure.py`), capped by `--max-batch`, then run: `oom` if it
did not fit after all. Columns (`bench/e2e/measure.py` says how each is timed):
  ttft_ms      one prompt's prefill (+ compression) to its first token, batch 1;
  ms/token     one decode step of the whole batch; tok/s: tokens per second summed over the batch;
  x_full       tok/s / hf_static's at the same prompt and batch; x_best_full: / the best tok/s any full-cache row
               reached at this prompt (any batch, static or dynamic);
  capture_ms   warm-up + capture of the CUDA graph (not in ms/token);
  peak_GiB     `max_memory_allocated` over prefill and decode, weights included; kv_MiB: KV bytes one sequence
               holds after prefill;
  scores       the score files HeadKV / CompressKV read (`harness.scores`): `packaged`, `synthetic` or `-`.
After the rows, the capacity table: the most concurrent sequences per (prompt, provider, kv_size) and whether that
number was measured (a batch that large ran) or only computed.
`--dry-run`: tiny random Llama and Mistral models on the CPU (torch backend, eager: a CPU has no CUDA graphs),
batches 1 and 3, every method plus both transformers caches; checks that every run generates all tokens, that the
copied sequences decode identically, and that method `full` gives transformers' greedy tokens; then, without
weights, every method's budgets planned at the Llama-3-8B, Mistral-7B and SmolLM2-135M shapes with the scores the
bench gives it there (rows with `new_tokens` 0), so a method that cannot be built at a real shape is an `error` row.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from bench.e2e.fill import HF_PROVIDERS
from bench.e2e.measure import engine_row, engine_source, hf_row, hf_ttft, max_batch
from bench.e2e.plan import plan_only
from bench.harness.cli import Report, no_gpu_message, parse_args
from bench.harness.environment import environment, has_cuda, header_line, one_cpu_thread
from bench.harness.results import build_doc, write_json
from bench.harness.scores import method_scores
from bench.harness.shapes import MODELS, hf_config
from bench.harness.table import MIB, Table
from raggedkv.engine.backend import BACKEND_NAMES, get_backend
from raggedkv.engine.cuda_graph import EAGER, GRAPH
from raggedkv.engine.methods import METHODS, get_method
from raggedkv.engine.runner import ModelRunner

BASELINE = "hf_static"
MAX = "max"
MODES = ("graph", "eager")
WARMUP_PROMPT = 1024
PLAN_KV_SIZE = 128
# Dry run only, after the tiny generations: every method planned at the shapes the GPU grids run (scores as the
# bench gives them there) and at SmolLM2-135M's, whose score files the engine ships. new_tokens 0: plan only.
PLAN_CONFIGS = [{"model": m, "prompt": n, "batch": 1, "kv_size": PLAN_KV_SIZE, "new_tokens": 0}
                for m, n in (("llama3-8b", 32768), ("mistral-7b", 32768), ("smollm2-135m", 8192))]


class Grid(NamedTuple):
    models: list[str]
    prompts: list[int]
    batches: list[int | str]
    providers: list[str]
    kv_sizes: list[int]
    new_tokens: int
    modes: list[str]


SERVED = [*HF_PROVIDERS, "headkv-r2", "snapkv", "ada-snapkv"]  # the method of record first
GRIDS = {
    "dry": Grid(["tiny-llama", "tiny-mistral"], [96], [1, 3], [*HF_PROVIDERS, *METHODS], [32], 6, ["eager"]),
    "quick": Grid(["llama3-8b"], [32768], [1, 8, 32, MAX], SERVED, [128, 512], 64, list(MODES)),
    "full": Grid(["llama3-8b"], [32768, 16384, 8192], [1, 8, 32, MAX], SERVED, [128, 512], 128, list(MODES)),
}


def provider_ids() -> list[str]:
    return [*HF_PROVIDERS, *METHODS]


def _batch(text: str) -> int | str:
    if text == MAX:
        return MAX
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"batch {text!r} must be >= 1 or {MAX!r}")
    return value


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), help="model shapes (default: per mode)")
    parser.add_argument("--prompts", nargs="+", type=int, help="prompt lengths in tokens, run in this order")
    parser.add_argument("--batches", nargs="+", type=_batch, help=f"batch sizes, or {MAX!r} (default 1 8 32 max)")
    parser.add_argument("--kv-size", nargs="+", type=int, help="average tokens kept per head (default 128 512)")
    parser.add_argument("--modes", nargs="+", choices=MODES, help="engine decode modes (default both on CUDA)")
    parser.add_argument("--new-tokens", type=int, help="tokens generated per run (quick 64, full 128)")
    parser.add_argument("--max-batch", type=int, default=2048, help="cap on the computed `max` batch (default 2048)")
    parser.add_argument("--backend", default="auto", choices=BACKEND_NAMES,
                        help="engine backend on CUDA (default auto: triton); the CPU always uses torch")
    parser.add_argument("--time-budget-s", type=float, help="skip rows that would start after this many seconds")


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


COLUMNS = [
    ("provider", lambda r: r["provider"], "{}"),
    ("mode", lambda r: r.get("mode"), "{}"),
    ("fill", lambda r: r.get("fill"), "{}"),
    ("ttft_ms", lambda r: r.get("ttft_ms"), "{:.1f}"),
    ("ms/token", lambda r: r.get("ms_per_token"), "{:.2f}"),
    ("tok/s", lambda r: r.get("decode_tok_s"), "{:.1f}"),
    ("x_full", lambda r: r.get("speedup"), "{:.2f}"),
    ("x_best_full", lambda r: r.get("x_best_full"), "{:.2f}"),
    ("capture_ms", lambda r: r.get("capture_ms"), "{:.0f}"),
    ("peak_GiB", lambda r: None if r.get("peak_bytes") is None else r["peak_bytes"] / 2**30, "{:.2f}"),
    ("kv_MiB", lambda r: None if r.get("kv_bytes") is None else r["kv_bytes"] / MIB, "{:.1f}"),
    ("scores", lambda r: r.get("scores"), "{}"),
    ("check", lambda r: r.get("check"), "{}"),
]
CONFIG_KEYS = ("model", "prompt", "batch", "kv_size", "new_tokens")


def run(argv: list[str] | None = None) -> Report:
    args = parse_args("e2e", "raggedkv engine vs transformers generate at serving batch sizes", argv,
                      provider_ids(), _add_arguments, kernel=False)
    if not args.dry_run and not has_cuda():
        print(no_gpu_message("e2e", args.out), file=sys.stderr)
        return Report(2)
    with one_cpu_thread(args.dry_run and not has_cuda()):
        return _run(args)


class Context(NamedTuple):
    """What every row of a run shares."""

    args: argparse.Namespace
    device: torch.device
    backend: str
    started: float
    table: Table
    rows: list[dict[str, Any]]
    problems: list[str]
    capacity: list[dict[str, Any]]


def _run(args: argparse.Namespace) -> Report:
    device = torch.device("cuda" if has_cuda() else "cpu")
    grid = GRIDS[args.mode]
    models, prompts = args.models or grid.models, args.prompts or grid.prompts
    batches = args.batches or grid.batches
    requested = args.providers or grid.providers  # run in this order, transformers first (the speed-ups need them)
    providers = [p for p in requested if p in HF_PROVIDERS] + [p for p in requested if p not in HF_PROVIDERS]
    kv_sizes, new_tokens = args.kv_size or grid.kv_sizes, args.new_tokens or grid.new_tokens
    modes = args.modes or (grid.modes if device.type == "cuda" else ["eager"])
    dtype = torch.bfloat16 if device.type == "cuda" and not args.dry_run else torch.float32  # dry run: exact tokens
    backend = args.backend if device.type == "cuda" else "torch"

    env = environment(args.command)
    timing = {"method": "wall clock, CUDA synchronised; engine decode: ModelRunner.decode's own timer (graph capture "
                        "excluded, reported as capture_ms); transformers: generate's wall time / new_tokens",
              "ttft": "batch 1: prefill (+ compression) to the first token", "fill": "identical prefills: one "
              "prompt prefilled once, its cache rows copied into every sequence", "dtype": str(dtype)[6:],
              "backend": backend, "modes": modes, "new_tokens": new_tokens, "transformers_compile": False}
    print(header_line("e2e", env, f"timing: wall clock, synchronised | {timing['dtype']} | engine backend {backend} "
                                  f"| decode {'/'.join(modes)} | {new_tokens} new tokens"))
    print(f"# engine per method vs {', '.join(HF_PROVIDERS)} = transformers generate (SDPA, static / dynamic full "
          "cache, auto-compile off); random weights, EOS disabled; batches filled with copies of one prefill")
    widths = {"model": max(len(m) for m in [*models, *(c["model"] for c in PLAN_CONFIGS)]), "prompt": 6, "batch": 5,
              "kv_size": 7, "new_tokens": 10, "provider": max(len(p) for p in providers), "mode": len(GRAPH), "fill": 6}
    columns = [(k, (lambda r, k=k: r["config"].get(k)), "{}") for k in CONFIG_KEYS] + COLUMNS
    ctx = Context(args, device, backend, time.monotonic(), Table(columns, widths), [], [], [])
    ctx.table.print_header()
    for model_key in models:
        model = build_model(model_key, device, dtype)
        if device.type == "cuda":
            _warm_up(ctx, model, model_key, providers, kv_sizes, modes)
        for prompt in prompts:
            ids = torch.randint(3, model.config.vocab_size, (1, prompt),
                                generator=torch.Generator().manual_seed(prompt)).to(device)
            base = {"model": model_key, "prompt": prompt, "new_tokens": new_tokens}
            units = [(p, None) for p in providers if p in HF_PROVIDERS] + [  # every method at the first kv_size first
                (p, kv) for kv in kv_sizes for p in providers if p not in HF_PROVIDERS]
            for provider, kv_size in units:
                _provider_rows(ctx, model, provider, base | {"kv_size": kv_size}, ids, batches,
                               ["eager"] if provider in HF_PROVIDERS else modes)
            if args.dry_run:
                _check_dry(ctx, [r for r in ctx.rows if r["config"]["model"] == model_key
                                 and r["config"]["prompt"] == prompt])
        del model
        _free(device)
    if args.dry_run:
        for config in PLAN_CONFIGS:
            for provider in providers:
                _add_row(ctx, {"config": dict(config), "provider": provider, **plan_only(config, provider)})
    _print_capacity(ctx.capacity)

    doc = build_doc("e2e", env, timing, ctx.rows, mode=args.mode, baseline=BASELINE, capacity=ctx.capacity,
                    models={m: MODELS[m][1] | {"family": MODELS[m][0]} for m in models})
    for problem in ctx.problems:
        print(f"! {problem}", file=sys.stderr)
    if args.dry_run:
        text = json.dumps(doc)
        print(f"# dry run: {sum(r['check'] == 'ok' for r in ctx.rows)}/{len(ctx.rows)} rows ok (generations on tiny "
              f"models, budget plans at real shapes); nothing written ({len(text)} bytes of JSON built in memory)")
        return Report(1 if ctx.problems else 0, doc)
    path = write_json(doc, args.out)
    print(f"# wrote {path}")
    return Report(1 if ctx.problems else 0, doc, path)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _guarded(fn: Callable[[], dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """`fn()`'s row, or an `oom` / `error` row saying what went wrong (the other rows still run)."""
    try:
        row = fn()
    except torch.cuda.OutOfMemoryError as exc:
        row = {"check": "oom", "error": str(exc).splitlines()[0]}
    except Exception as exc:  # noqa: BLE001 - report and go on with the other rows
        row = {"check": "error", "error": f"{type(exc).__name__}: {exc}"}
    _free(device)  # the exception's frames are gone: free what they held
    return row


def _warm_up(ctx: Context, model, model_key: str, providers: list[str], kv_sizes: list[int],
             modes: list[str]) -> None:
    """Compile the kernels and initialise cuBLAS for every provider and mode on a short prompt, untimed."""
    ids = torch.randint(3, model.config.vocab_size, (1, WARMUP_PROMPT), device=ctx.device)
    for provider in providers:
        if provider in HF_PROVIDERS:
            _guarded(lambda: hf_row(model, ids, 2, 4, HF_PROVIDERS[provider], 0.0, ctx.device, False), ctx.device)
            continue
        method = get_method(provider, **method_scores(model_key, provider).params)
        for mode in modes:
            runner = ModelRunner(model, get_backend(ctx.backend, ctx.device), cuda_graph=mode == "graph")
            _guarded(lambda: engine_row(runner, engine_source(runner, ids[0].tolist(), method, kv_sizes[0], 4,
                                                              ctx.device), 2, 4, ctx.device, False), ctx.device)


def _provider_rows(ctx: Context, model, provider: str, base: dict[str, Any], ids: torch.Tensor,
                   batches: list[int | str], modes: list[str]) -> None:
    """Every (mode, batch) row of one (prompt, provider, kv_size): one batch-1 prefill (or TTFT) shared by all."""
    scores, hf_kind = None, HF_PROVIDERS.get(provider)
    if hf_kind is None:
        scores = method_scores(base["model"], provider)
        method = get_method(provider, **scores.params)
        prefill = _guarded(lambda: {"source": engine_source(
            ModelRunner(model, get_backend(ctx.backend, ctx.device)), ids[0].tolist(), method, base["kv_size"],
            base["new_tokens"], ctx.device)}, ctx.device)
        source = prefill.get("source")
    else:
        prefill = _guarded(lambda: {"ttft": hf_ttft(model, ids, hf_kind, ctx.device)}, ctx.device)
    for mode in modes:
        runner = None if hf_kind else ModelRunner(model, get_backend(ctx.backend, ctx.device),
                                                  cuda_graph=mode == "graph")
        done: list[dict[str, Any]] = []
        for batch in batches:
            config = base | {"batch": batch}
            row: dict[str, Any] = {"config": config, "provider": provider, "mode": GRAPH if mode == "graph" else EAGER,
                                   "fill": "copies",
                                   "scores": scores.label if scores else "-",
                                   "score_files": scores.describe() if scores else None}
            if batch == MAX:
                batch = _max_batch(ctx, done, row)
                if batch is None:
                    _add_row(ctx, row)
                    continue
                config["batch"] = batch
            if ctx.args.time_budget_s and time.monotonic() - ctx.started > ctx.args.time_budget_s:
                row.update(check="skipped", error=f"time budget of {ctx.args.time_budget_s:g} s spent")
            elif "check" in prefill:  # the shared prefill failed
                row.update(check=prefill["check"], error=f"prefill: {prefill['error']}")
            elif hf_kind:
                row.update(_checked(lambda: hf_row(model, ids, batch, base["new_tokens"], hf_kind, prefill["ttft"],
                                                   ctx.device, ctx.args.dry_run), base["new_tokens"], ctx.device))
            else:
                row.update(_checked(lambda: engine_row(runner, source, batch, base["new_tokens"], ctx.device,
                                                       ctx.args.dry_run), base["new_tokens"], ctx.device))
            done.append(row)
            _add_row(ctx, row)


def _checked(fn: Callable[[], dict[str, Any]], new_tokens: int, device: torch.device) -> dict[str, Any]:
    row = _guarded(fn, device)
    if "check" not in row:
        row["check"] = "ok"
        if row["generated"] != new_tokens:
            row.update(check="fail", error=f"generated {row['generated']} tokens, not {new_tokens}")
        elif not row["rows_identical"]:
            row.update(check="fail", error="copies of one prefill decoded different tokens")
    return row


def _max_batch(ctx: Context, done: list[dict[str, Any]], row: dict[str, Any]) -> int | None:
    """The `max` batch to run for `row`'s provider (recorded in the capacity table), or None (row says why)."""
    if ctx.device.type != "cuda":
        row.update(check="skipped", error="the largest batch that fits is computed from GPU memory")
        return None
    fit = max_batch(done, torch.cuda.get_device_properties(ctx.device).total_memory)
    largest_ok = max((r["config"]["batch"] for r in done if r.get("check") == "ok"), default=None)
    entry = {k: row["config"][k] for k in ("model", "prompt", "kv_size")} | {"provider": row["provider"],
                                                                             "mode": row["mode"], **(fit or {})}
    ctx.capacity.append(entry)
    if fit is None:
        row.update(check="skipped", error="needs two measured batches to compute the largest that fits")
        entry["how"] = row["error"]
        return None
    batch = min(fit["max_batch"], ctx.args.max_batch)
    entry["capped"] = batch < fit["max_batch"]
    if largest_ok is not None and batch <= largest_ok:
        row.update(check="skipped", error=f"the computed maximum {batch} is not above batch {largest_ok}, run above")
        entry["measured_batch"] = largest_ok
        return None
    entry["run_batch"] = batch
    row["capacity"] = entry
    return batch


def _add_row(ctx: Context, row: dict[str, Any]) -> None:
    """Speed-ups against the full-cache rows measured before it, then print and keep the row."""
    config = row["config"]
    full = [r for r in ctx.rows if r["provider"] in HF_PROVIDERS and r.get("decode_tok_s")
            and r["config"]["model"] == config["model"] and r["config"]["prompt"] == config["prompt"]]
    same = [r for r in full if r["provider"] == BASELINE and r["config"]["batch"] == config["batch"]]
    if row.get("decode_tok_s") and same:
        row["speedup"] = row["decode_tok_s"] / same[0]["decode_tok_s"]
    if row.get("decode_tok_s") and full:
        row["x_best_full"] = row["decode_tok_s"] / max(r["decode_tok_s"] for r in full)
    if "capacity" in row and row["check"] in ("ok", "oom"):
        row["capacity"]["measured"] = row["check"] == "ok"
    if row["check"] not in ("ok", "oom", "skipped"):
        ctx.problems.append(f"{row['provider']} on {config}: {row.get('error')}")
    ctx.table.print_row(row)
    ctx.rows.append(row)


def _check_dry(ctx: Context, rows: list[dict[str, Any]]) -> None:
    """Dry run (fp32): method `full` gives transformers' greedy tokens, at every batch, with either cache."""
    for row in rows:
        if row["provider"] != "full" or row.get("tokens") is None:
            continue
        for other in (r for r in rows if r["provider"] in HF_PROVIDERS and r["config"]["batch"] ==
                      row["config"]["batch"] and r.get("tokens") is not None):
            if other["tokens"] != row["tokens"]:
                row["check"] = "fail"
                ctx.problems.append(f"method full on {row['config']}: tokens {row['tokens']} != {other['provider']} "
                                    f"{other['tokens']}")


def _print_capacity(capacity: list[dict[str, Any]]) -> None:
    if not capacity:
        return
    print("# most concurrent sequences that fit (computed from the measured per-sequence bytes; `measured`: a batch "
          "that large ran)")
    for e in capacity:
        kv = "-" if e["kv_size"] is None else e["kv_size"]
        if "max_batch" not in e:
            print(f"#   {e['model']} {e['prompt']} {e['provider']} kv_size {kv} {e['mode']}: {e['how']}")
            continue
        ran = ("measured" if e.get("measured") else "oom when run" if "measured" in e else "not run") + (
            f" at {e.get('run_batch') or e.get('measured_batch')}" + (" (capped by --max-batch)" if e.get("capped")
                                                                     else ""))
        print(f"#   {e['model']} {e['prompt']} {e['provider']} kv_size {kv} {e['mode']}: {e['max_batch']} sequences, "
              f"{e['bytes_per_seq'] / MIB:.1f} MiB each ({e['how']}); {ran}")


def main(argv: list[str] | None = None) -> int:
    return run(argv).exit_code


if __name__ == "__main__":
    raise SystemExit(main())
