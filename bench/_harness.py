"""Shared benchmark machinery: CLI, environment capture, cold-L2 CUDA-event timing, the reference check, the copy
bandwidth ceiling, the fixed-width table and the JSON document (schema `ragged-kv-bench/1`).

A kernel benchmark (`bench_decode`, `bench_scoring`, `bench_select`, `bench_append`) is a `KernelBench`: its
configs, a case factory (inputs for one config), providers (each turns a case into a `Bound` zero-argument call),
references, and byte/FLOP formulas. `run(bench, argv)` does everything else:

* `--dry-run`: every provider once on tiny shapes, checked against its reference; on the CPU the Triton launchers
  run under the interpreter (`TRITON_INTERPRET=1` is set here, before `raggedkv.kernels` is imported). Prints the
  table, builds the JSON in memory and writes nothing.
* otherwise (CUDA only; without a GPU it says so and exits 2, writing nothing): measure the device-to-device copy
  bandwidth, then per config and provider: reference check, peak extra memory of one call, timing; print each
  config's rows as they finish; write `bench/results/<bench>-<gpu-slug>-<YYYYmmdd-HHMMSS>.json`.

Timing: CUDA events around each call, median/p20/p80 of `reps` calls after `warmup_ms` of warm-up; before every
timed call a 256 MiB buffer is written, which evicts the 50 MB L2 of an H100 (cold L2); `--cuda-graph` replays a
captured graph of the call instead of launching it eagerly.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import importlib.metadata
import json
import math
import os
import re
import shlex
import subprocess
import sys
import traceback
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from raggedkv.closeness import compare

SCHEMA = "ragged-kv-bench/1"
BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
QUANTILES = (0.5, 0.2, 0.8)
FLUSH_BYTES = 256 << 20
COPY_BYTES = 512 << 20
MIB = 1 << 20

# Module of every Triton launcher inside raggedkv.kernels (imported lazily: see prepare_cpu_interpreter).
LAUNCHER_MODULES = {
    "window_scores": "window_scores",
    "select_and_pack": "select_pack",
    "append_kv": "append",
    "ragged_decode_attention": "decode",
}


@dataclass(frozen=True, slots=True)
class AttnShape:
    """Attention shape of one decoder layer."""

    num_qo_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.num_qo_heads // self.num_kv_heads


# Llama-3-8B and Mistral-7B have the same attention shape (32 query / 8 KV heads, head_dim 128).
MODEL_SHAPES = {
    "llama3-8b": AttnShape(32, 8, 128),
    "smollm2-135m": AttnShape(9, 3, 64),
}


# ---------------------------------------------------------------------------------------------------------------
# Environment


def has_cuda() -> bool:
    return torch.cuda.is_available()


def prepare_cpu_interpreter() -> None:
    """Without CUDA, make the Triton launchers run under the interpreter.

    `TRITON_INTERPRET` is read when `@triton.jit` decorates, so it must be set before any Triton module of
    raggedkv.kernels is imported; raises RuntimeError when one already was without it.
    """
    if has_cuda() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return
    loaded = [f"raggedkv.kernels.{m}" for m in LAUNCHER_MODULES.values() if f"raggedkv.kernels.{m}" in sys.modules]
    if loaded:
        raise RuntimeError(
            f"{', '.join(loaded)} was imported before TRITON_INTERPRET=1 was set, so its kernels cannot run on the "
            "CPU; run the dry run in a fresh process or export TRITON_INTERPRET=1 first"
        )
    os.environ["TRITON_INTERPRET"] = "1"


def launcher(name: str) -> Callable[..., Any]:
    """The Triton launcher `raggedkv.kernels.<module>.<name>` (imported on first use)."""
    return getattr(importlib.import_module(f"raggedkv.kernels.{LAUNCHER_MODULES[name]}"), name)


def reference(name: str) -> Callable[..., Any]:
    """The pure-torch twin `raggedkv.kernels.reference.<name>_ref`."""
    return getattr(importlib.import_module("raggedkv.kernels.reference"), f"{name}_ref")


def missing_module(module: str) -> str | None:
    """None when `module` imports, else the reason (for a provider's `requires`)."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure makes the provider unavailable
        return f"{module} not importable ({type(exc).__name__}: {exc})"
    return None


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3' (file-name safe)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")
    return slug or "gpu"


def git_info() -> tuple[str, bool | None]:
    """(SHA, dirty) of the checkout; `RAGGEDKV_GIT_SHA` overrides where the tree is a copy without .git."""
    override = os.environ.get("RAGGEDKV_GIT_SHA")
    if override:
        return override, None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return sha, bool(status.strip())


def environment(command: str) -> dict[str, Any]:
    """Device, versions, git SHA, time and the command line, for the header and the JSON `env`."""
    import triton

    sha, dirty = git_info()
    env: dict[str, Any] = {"gpu": None, "gpu_slug": None, "sm": None, "num_sms": None, "gpu_mem_gib": None}
    if has_cuda():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        env.update(gpu=props.name, gpu_slug=gpu_slug(props.name), sm=f"{props.major}{props.minor}",
                   num_sms=props.multi_processor_count, gpu_mem_gib=round(props.total_memory / 2**30, 1))
    env.update(
        cuda=torch.version.cuda,
        torch=torch.__version__,
        triton=triton.__version__,
        flash_attn=package_version("flash-attn") or package_version("flash_attn"),
        transformers=package_version("transformers"),
        python=sys.version.split()[0],
        triton_interpret=os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
        git_sha=sha,
        git_dirty=dirty,
        timestamp=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        command=command,
    )
    return env


def header_line(bench: str, env: dict[str, Any], timing: str) -> str:
    device = f"{env['gpu']} (sm{env['sm']}, {env['num_sms']} SMs)" if env["gpu"] else "CPU (no CUDA device)"
    sha = (env["git_sha"] or "unknown")[:12] + ("+dirty" if env["git_dirty"] else "")
    return (f"# bench_{bench} | {device} | torch {env['torch']} (CUDA {env['cuda']}) | triton {env['triton']} | "
            f"flash_attn {env['flash_attn'] or '-'} | git {sha} | {timing}")


# ---------------------------------------------------------------------------------------------------------------
# Budgets


def head_budgets(batch: int, num_heads: int, mean: int, dist: str, *, lo: int, hi: int, seed: int = 0,
                 alpha: float = 0.1) -> list[int]:
    """Per-(sequence, head) token budgets, `batch * num_heads` ints; each sequence's heads share `mean * num_heads`.

    `dist="uniform"`: every head gets `mean`. `dist="skew"`: shares drawn per sequence from a Dirichlet(alpha)
    over the heads (HeadKV/Ada-KV-like skew: a few heads hold most of the budget), then water-filled so that every
    head gets at least `lo` and at most `hi` tokens, rounded by largest remainder to the exact total.
    The total is `min(mean, hi) * num_heads` in both cases (equal totals make uniform and skew comparable).
    """
    import numpy as np

    mean = max(lo, min(mean, hi))
    if dist == "uniform":
        return [mean] * (batch * num_heads)
    if dist != "skew":
        raise ValueError(f"dist={dist!r} is not supported; choose 'uniform' or 'skew'")
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for _ in range(batch):
        weights = rng.dirichlet([alpha] * num_heads)
        extra, room = float((mean - lo) * num_heads), float(hi - lo)
        alloc = np.zeros(num_heads)
        while extra > 1e-9:
            free = alloc < room
            share = np.where(free, weights, 0.0)
            if share.sum() <= 0:
                share = free.astype(float)
            grown = np.minimum(alloc + share / share.sum() * extra, room)
            extra -= float(grown.sum() - alloc.sum())
            alloc = grown
        ints = np.floor(alloc + 1e-9).astype(int)
        short = (mean - lo) * num_heads - int(ints.sum())
        for i in np.argsort(-(alloc - ints), kind="stable"):
            if short <= 0:
                break
            if ints[i] < room:
                ints[i] += 1
                short -= 1
        out.extend(int(lo + x) for x in ints)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Timing


@dataclass(slots=True)
class Measurement:
    ms_p50: float
    ms_p20: float
    ms_p80: float
    reps: int
    cuda_graph: bool


def _capture_graph(fn: Callable[[], Any], reset: Callable[[], None]) -> Callable[[], Any] | None:
    """A CUDA graph of one `fn()` call, or None when `fn` cannot be captured (host syncs, CPU work)."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                reset()
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        reset()
        with torch.cuda.graph(graph):
            fn()
        torch.cuda.synchronize()
        return graph.replay
    except Exception:  # noqa: BLE001 - uncapturable: time it eagerly and say so in the row
        torch.cuda.synchronize()
        return None


@dataclass
class Timer:
    """Cold-L2 CUDA-event timing: median/p20/p80 over `reps` calls after `warmup_ms` of warm-up calls.

    `reset` (optional) runs before every call, untimed, to restore in-place state (e.g. `kv_lens` for appends).
    """

    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    cuda_graph: bool = False
    min_reps: int = 10
    max_reps: int = 500
    _flush: torch.Tensor | None = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        return {
            "method": "cuda_events",
            "warmup_ms": self.warmup_ms,
            "rep_ms": self.rep_ms,
            "reps": [self.min_reps, self.max_reps],
            "quantiles": list(QUANTILES),
            "cuda_graph": self.cuda_graph,
            "cold_l2": f"{FLUSH_BYTES // MIB} MiB buffer written before every timed call",
        }

    def summary(self) -> str:
        how = "CUDA-graph replay" if self.cuda_graph else "eager launches"
        return (f"timing: CUDA events, {how}, p50/p20/p80 of {self.min_reps}-{self.max_reps} calls "
                f"(~{self.rep_ms:g} ms) after {self.warmup_ms:g} ms warm-up, L2 flushed ({FLUSH_BYTES // MIB} MiB) "
                "before each call")

    def __call__(self, fn: Callable[[], Any], reset: Callable[[], None] | None = None) -> Measurement:
        reset = reset or (lambda: None)
        if self._flush is None:
            self._flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
        run = _capture_graph(fn, reset) if self.cuda_graph else None
        graphed = run is not None
        run = run or fn

        reset()
        run()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(5):
            reset()
            run()
        end.record()
        torch.cuda.synchronize()
        estimate = max(start.elapsed_time(end) / 5, 1e-3)
        for _ in range(max(1, int(self.warmup_ms / estimate))):
            reset()
            run()
        reps = min(max(int(self.rep_ms / estimate), self.min_reps), self.max_reps)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            reset()
            self._flush.zero_()
            starts[i].record()
            run()
            ends[i].record()
        torch.cuda.synchronize()
        times = torch.tensor([s.elapsed_time(e) for s, e in zip(starts, ends)], dtype=torch.float64)
        p50, p20, p80 = torch.quantile(times, torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
        return Measurement(p50, p20, p80, reps, graphed)


def copy_bandwidth(timer: Timer, nbytes: int = COPY_BYTES) -> dict[str, Any]:
    """The ceiling: a device-to-device `copy_` of `nbytes`, timed like the kernels, read + write bytes counted."""
    src = torch.ones(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    m = timer(lambda: dst.copy_(src))
    return {"gbps": 2 * nbytes / (m.ms_p50 * 1e-3) / 1e9, "bytes": nbytes, "ms_p50": m.ms_p50,
            "how": f"dst.copy_(src) of {nbytes // MIB} MiB on the same device, read + write counted, same timer"}


def peak_extra_bytes(fn: Callable[[], Any], reset: Callable[[], None] | None = None) -> int:
    """Peak CUDA memory one `fn()` call allocates above what is allocated before it (its outputs included)."""
    if reset:
        reset()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return int(peak)


# ---------------------------------------------------------------------------------------------------------------
# Benchmark specification


@dataclass(slots=True)
class Bound:
    """One provider bound to one case.

    fn: one call of the op (what is timed); returns the output unless `result` is given.
    result: the output to check, in the reference's layout, read after one `fn()` (for in-place ops).
    reset: restores in-place state before a call (untimed).
    context: a context manager entered around the check and the timing (e.g. an SDPA backend choice).
    """

    fn: Callable[[], Any]
    result: Callable[[], Any] | None = None
    reset: Callable[[], None] | None = None
    context: Callable[[], contextlib.AbstractContextManager] | None = None


@dataclass(frozen=True, slots=True)
class Provider:
    """An implementation of the benchmarked op.

    name: provider id (a table column value, e.g. `triton`, `torch_ref`, `sdpa_full`).
    label: what it is, printed once under the header.
    setup: case -> Bound.
    ref: which of the bench's references checks it (None: not checked, e.g. a prefill-time yardstick).
    rtol: tolerance override (relative to max |reference|).
    requires: returns why the provider cannot run here, or None.
    key: when given, the measurement depends only on `key(config)`; equal keys reuse one measurement.
    """

    name: str
    label: str
    setup: Callable[[Any], Bound]
    ref: str | None = "ref"
    rtol: float | None = None
    requires: Callable[[], str | None] = lambda: None
    key: Callable[[dict[str, Any]], Hashable] | None = None


@dataclass(slots=True)
class KernelBench:
    """What a `bench_<op>.py` defines; `run` does the rest.

    configs: mode ("dry", "quick", "full") -> list of config dicts (the printed config columns, in order).
    make_case: (config, device) -> the case object the providers and references read.
    references: name -> (case -> expected output).
    baseline: provider ids in order of preference; the first that ran is the speedup denominator.
    metrics: printed metric columns (see METRIC_COLUMNS).
    nbytes / flops: (config, provider id) -> bytes touched / FLOPs of one call, or None.
    derive: adds bench-specific values to the rows of one config (all providers done).
    """

    name: str
    title: str
    configs: Callable[[str], list[dict[str, Any]]]
    make_case: Callable[[dict[str, Any], torch.device], Any]
    providers: Sequence[Provider]
    references: dict[str, Callable[[Any], Any]]
    baseline: Sequence[str]
    metrics: Sequence[str]
    rtol: float = 0.0
    nbytes: Callable[[dict[str, Any], str], int | None] | None = None
    flops: Callable[[dict[str, Any], str], float | None] | None = None
    derive: Callable[[list[dict[str, Any]]], None] | None = None
    notes: Sequence[str] = ()


# ---------------------------------------------------------------------------------------------------------------
# Table


def _scaled(key: str, factor: float) -> Callable[[dict[str, Any]], float | None]:
    return lambda row: None if row.get(key) is None else row[key] * factor


# Printed name -> (value from a JSON row, format).
METRIC_COLUMNS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "MiB": (_scaled("bytes", 1 / MIB), "{:.1f}"),
    "p50_us": (_scaled("ms_p50", 1e3), "{:.1f}"),
    "p20_us": (_scaled("ms_p20", 1e3), "{:.1f}"),
    "p80_us": (_scaled("ms_p80", 1e3), "{:.1f}"),
    "GB/s": (lambda r: r.get("gbps"), "{:.1f}"),
    "frac_copy": (lambda r: r.get("frac_copy"), "{:.2f}"),
    "TFLOP/s": (lambda r: r.get("tflops"), "{:.2f}"),
    "peak_MiB": (_scaled("peak_extra_bytes", 1 / MIB), "{:.1f}"),
    "pct_prefill": (lambda r: r.get("pct_prefill"), "{:.2f}"),
    "speedup": (lambda r: r.get("speedup"), "{:.2f}"),
    "max_err": (lambda r: r.get("max_abs_err"), "{:.1e}"),
}


class Table:
    """A fixed-width, right-aligned table printed row by row (widths fixed up front from the known values)."""

    def __init__(self, columns: Sequence[tuple[str, Callable[[dict[str, Any]], Any], str]],
                 widths: dict[str, int] | None = None, stream=None):
        self.columns = list(columns)
        self.stream = stream or sys.stdout
        widths = widths or {}
        self.widths = [max(len(name), widths.get(name, 9)) for name, _, _ in self.columns]

    @staticmethod
    def cell(value: Any, fmt: str) -> str:
        if value is None:
            return "-"
        if isinstance(value, float) and math.isinf(value):
            return "inf"
        if isinstance(value, str):
            return value
        return fmt.format(value)

    def format_header(self) -> str:
        return "  ".join(name.rjust(w) for (name, _, _), w in zip(self.columns, self.widths))

    def format_row(self, row: dict[str, Any]) -> str:
        return "  ".join(self.cell(get(row), fmt).rjust(w) for (_, get, fmt), w in zip(self.columns, self.widths))

    def print_header(self) -> None:
        print(self.format_header(), file=self.stream, flush=True)

    def print_row(self, row: dict[str, Any]) -> None:
        print(self.format_row(row), file=self.stream, flush=True)


def config_columns(configs: Sequence[dict[str, Any]]) -> list[tuple[str, Callable[[dict[str, Any]], Any], str]]:
    """One column per config key (first-seen order), width from the longest value."""
    names: list[str] = []
    for config in configs:
        names.extend(k for k in config if k not in names)
    return [(name, (lambda r, n=name: r["config"].get(n)), "{}") for name in names]


def config_widths(configs: Sequence[dict[str, Any]]) -> dict[str, int]:
    widths: dict[str, int] = {}
    for config in configs:
        for k, v in config.items():
            widths[k] = max(widths.get(k, 0), len(str(v)))
    return widths


# ---------------------------------------------------------------------------------------------------------------
# JSON


def build_doc(bench: str, env: dict[str, Any], timing: dict[str, Any], rows: list[dict[str, Any]],
              **extra: Any) -> dict[str, Any]:
    return {"schema": SCHEMA, "bench": bench, "env": env, "timing": timing, **extra, "rows": rows}


def write_json(doc: dict[str, Any], out_dir: Path) -> Path:
    """Write `doc` to `<out_dir>/<bench>-<gpu-slug>-<YYYYmmdd-HHMMSS>.json` (the timestamp is the doc's)."""
    stamp = dt.datetime.strptime(doc["env"]["timestamp"], "%Y-%m-%dT%H:%M:%SZ").strftime("%Y%m%d-%H%M%S")
    suffix = "-graph" if doc.get("timing", {}).get("cuda_graph") else ""
    path = Path(out_dir) / f"{doc['bench']}-{doc['env']['gpu_slug'] or 'cpu'}-{stamp}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------
# CLI and driver


def parse_args(name: str, title: str, argv: Sequence[str] | None, provider_ids: Iterable[str] = (),
               add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
               kernel: bool = True) -> argparse.Namespace:
    """The shared CLI; `kernel=False` leaves out the kernel-timing options (reference check, graphs, warm-up)."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.bench_{name}", description=title)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a small subset of the grid (the default)")
    size.add_argument("--full", action="store_true", help="the whole grid")
    parser.add_argument("--providers", nargs="+", metavar="ID",
                        help=f"providers to run, space- or comma-separated, from: {', '.join(provider_ids)} "
                             "(default: every available one; bench_e2e: its grid's)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the JSON goes (default bench/results)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check every provider on tiny shapes (CPU: Triton interpreter) and write nothing")
    if kernel:
        parser.add_argument("--no-refcheck", action="store_true", help="skip the check against the reference")
        parser.add_argument("--cuda-graph", action="store_true", help="time CUDA-graph replays instead of launches")
        parser.add_argument("--warmup-ms", type=float, default=25.0, help="warm-up per timing (default 25)")
        parser.add_argument("--rep-ms", type=float, default=100.0, help="timed calls per timing, in ms (default 100)")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(list(argv) if argv is not None else None)
    args.mode = "dry" if args.dry_run else ("full" if args.full else "quick")
    args.command = shlex.join(["python", "-m", f"bench.bench_{name}",
                               *(argv if argv is not None else sys.argv[1:])])
    if args.providers:
        args.providers = [p for item in args.providers for p in item.split(",") if p]
        unknown = sorted(set(args.providers) - set(provider_ids))
        if unknown:
            parser.error(f"--providers {','.join(unknown)} unknown; choose from {', '.join(provider_ids)}")
    return args


def no_gpu_message(name: str, out: Path) -> str:
    return (f"bench_{name}: no CUDA device here, so nothing was timed and nothing was written to {out}. "
            f"Timings need a GPU; `python -m bench.bench_{name} --dry-run` checks every provider on tiny shapes "
            "on the CPU (Triton interpreter) without writing anything.")


@dataclass(slots=True)
class Report:
    """What a run produced: the exit code, the JSON document (also for dry runs) and where it was written."""

    exit_code: int
    doc: dict[str, Any] | None = None
    path: Path | None = None


def _available(providers: Sequence[Provider], wanted: Sequence[str] | None) -> tuple[list[Provider], dict[str, str]]:
    runnable, skipped = [], {}
    for p in providers:
        if wanted and p.name not in wanted:
            continue
        reason = p.requires()
        if reason:
            skipped[p.name] = reason
        else:
            runnable.append(p)
    return runnable, skipped


def _measure(bench: KernelBench, provider: Provider, case: Any, refs: dict[str, Any], args: argparse.Namespace,
             timer: Timer | None, row: dict[str, Any]) -> None:
    """Check, peak memory and timing of one provider on one case, into `row`."""
    bound = provider.setup(case)
    with bound.context() if bound.context else contextlib.nullcontext():
        if provider.ref is not None and not args.no_refcheck:
            if provider.ref not in refs:
                refs[provider.ref] = bench.references[provider.ref](case)
            if bound.reset:
                bound.reset()
            out = bound.fn()
            rtol = provider.rtol if provider.rtol is not None else bench.rtol
            err, ok = compare(bound.result() if bound.result else out, refs[provider.ref], rtol)
            row.update(max_abs_err=err, check="ok" if ok else "fail", rtol=rtol)
            del out
        elif timer is None:  # dry run of an unchecked provider: it must at least run
            if bound.reset:
                bound.reset()
            bound.fn()
            row["check"] = "ran"
        if timer is not None and row["check"] != "fail":
            row["peak_extra_bytes"] = peak_extra_bytes(bound.fn, bound.reset)
            m = timer(bound.fn, bound.reset)
            row.update(ms_p50=m.ms_p50, ms_p20=m.ms_p20, ms_p80=m.ms_p80, reps=m.reps, cuda_graph=m.cuda_graph)


def _provider_row(bench: KernelBench, provider: Provider, config: dict[str, Any], case: Any, refs: dict[str, Any],
                  args: argparse.Namespace, timer: Timer | None, memo: dict, problems: list[str]) -> dict[str, Any]:
    """One table/JSON row: measured, or copied from an equal earlier measurement (`Provider.key`)."""
    row: dict[str, Any] = {
        "config": dict(config), "provider": provider.name,
        "bytes": bench.nbytes(config, provider.name) if bench.nbytes else None,
        "flops": bench.flops(config, provider.name) if bench.flops else None,
        "ms_p50": None, "ms_p20": None, "ms_p80": None, "reps": None, "cuda_graph": None,
        "max_abs_err": None, "check": "skipped", "peak_extra_bytes": None,
    }
    key = (provider.name, provider.key(config)) if provider.key else None
    if key is not None and key in memo:
        return row | memo[key] | {"shared": True}
    try:
        _measure(bench, provider, case, refs, args, timer, row)
    except Exception as exc:  # noqa: BLE001 - report the provider's failure, go on with the others
        row.update(check="error", error=f"{type(exc).__name__}: {exc}")
        problems.append(f"{provider.name} on {config}: {traceback.format_exc(limit=-3)}")
    if row["check"] == "fail":
        problems.append(f"{provider.name} on {config}: max abs error {row['max_abs_err']:.3e} above "
                        f"rtol {row['rtol']:.1e} x max |reference|")
    if key is not None:
        memo[key] = {k: v for k, v in row.items() if k not in ("config", "provider", "bytes", "flops")}
    return row


def _finish_config(bench: KernelBench, rows: list[dict[str, Any]], baseline: str | None,
                   ceiling: dict[str, Any] | None) -> None:
    """Throughput, fraction of the copy bandwidth, speedup vs the baseline, then the bench's own columns."""
    base = next((r for r in rows if r["provider"] == baseline), None)
    for r in rows:
        ms = r["ms_p50"]
        r["gbps"] = r["bytes"] / (ms * 1e-3) / 1e9 if ms and r["bytes"] else None
        r["tflops"] = r["flops"] / (ms * 1e-3) / 1e12 if ms and r["flops"] else None
        r["frac_copy"] = r["gbps"] / ceiling["gbps"] if r["gbps"] and ceiling else None
        r["baseline"] = baseline
        r["speedup"] = base["ms_p50"] / ms if base and base["ms_p50"] and ms else None
    if bench.derive:
        bench.derive(rows)


@contextlib.contextmanager
def one_cpu_thread(enabled: bool = True):
    """Run tiny CPU work on one thread (restored afterwards): with a busy CI box, torch's thread pool can make a
    64-wide matmul take 10 ms instead of 10 us."""
    before = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(bench: KernelBench, argv: Sequence[str] | None = None) -> Report:
    """Parse the CLI, then dry-run (check only) or benchmark `bench`; see the module docstring."""
    args = parse_args(bench.name, bench.title, argv, [p.name for p in bench.providers])
    if args.dry_run:
        prepare_cpu_interpreter()
    elif not has_cuda():
        print(no_gpu_message(bench.name, args.out), file=sys.stderr)
        return Report(2)
    with one_cpu_thread(args.dry_run and not has_cuda()):
        return _run(bench, args)


def _run(bench: KernelBench, args: argparse.Namespace) -> Report:
    device = torch.device("cuda" if has_cuda() else "cpu")
    providers, skipped = _available(bench.providers, args.providers)
    baseline = next((b for b in bench.baseline if b in {p.name for p in providers}), None)
    timer = None if args.dry_run else Timer(args.warmup_ms, args.rep_ms, args.cuda_graph)
    env = environment(args.command)
    ceiling = copy_bandwidth(timer) if timer else None
    configs = bench.configs(args.mode)

    if timer:
        timing_line = timer.summary() + f" | copy {ceiling['gbps']:.0f} GB/s"
    else:
        timing_line = f"dry run on {device.type}" + (" (Triton interpreter)" if env["triton_interpret"] else "")
    print(header_line(bench.name, env, timing_line))
    print(f"# {bench.title}; speedup = baseline time / time, baseline = {baseline or '-'}")
    for p in providers:
        print(f"#   {p.name:<12} {p.label}")
    for name, reason in skipped.items():
        print(f"#   {name:<12} skipped: {reason}")
    for note in bench.notes:
        print(f"# {note}")
    columns = config_columns(configs) + [("provider", lambda r: r["provider"], "{}")]
    columns += [(m, *METRIC_COLUMNS[m]) for m in bench.metrics]
    widths = config_widths(configs) | {"provider": max([8] + [len(p.name) for p in providers])}
    table = Table(columns, widths)
    table.print_header()

    rows: list[dict[str, Any]] = []
    memo: dict[tuple[str, Hashable], dict[str, Any]] = {}
    problems: list[str] = []
    for config in configs:
        torch.manual_seed(0)
        case = bench.make_case(config, device)
        refs: dict[str, Any] = {}
        config_rows = [_provider_row(bench, p, config, case, refs, args, timer, memo, problems) for p in providers]
        _finish_config(bench, config_rows, baseline, ceiling)
        for row in config_rows:
            table.print_row(row)
        rows.extend(config_rows)
        del case, refs
        if device.type == "cuda":
            torch.cuda.empty_cache()

    timing = timer.describe() if timer else {"method": "none (dry run: reference check only)"}
    doc = build_doc(bench.name, env, timing, rows, mode=args.mode, ceiling=ceiling, baseline=baseline,
                    providers={p.name: p.label for p in providers}, skipped=skipped)
    text = json.dumps(doc)  # the document must serialise, also in a dry run
    for problem in problems:
        print(f"! {problem}", file=sys.stderr)
    if args.dry_run:
        passed = sum(r["check"] == "ok" for r in rows)
        checked = sum(r["check"] in ("ok", "fail", "error") for r in rows)
        print(f"# dry run: {passed}/{checked} reference checks passed, {sum(r['check'] == 'ran' for r in rows)} "
              f"unchecked calls ran; nothing written ({len(text)} bytes of JSON built in memory)")
        return Report(1 if problems else 0, doc)
    path = write_json(doc, args.out)
    print(f"# wrote {path}")
    return Report(1 if problems else 0, doc, path)


def main(bench: KernelBench, argv: Sequence[str] | None = None) -> int:
    return run(bench, argv).exit_code
