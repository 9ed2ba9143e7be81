"""The driver of a kernel benchmark: `run(bench, argv)` parses the CLI, then checks or times every provider.

* `--dry-run`: every provider once on tiny shapes, checked against its reference (`raggedkv.closeness.compare`);
  on the CPU the Triton launchers run under the interpreter (`TRITON_INTERPRET=1` is set here, before
  `raggedkv.kernels` is imported). Prints the table, builds the JSON in memory and writes nothing.
* otherwise (CUDA only; without a GPU it says so and exits 2, writing nothing): measure the device-to-device copy
  bandwidth, then per config and provider: reference check, peak extra memory of one call, timing; print each
  config's rows as they finish; write `bench/results/<bench>-<gpu-slug>-<YYYYmmdd-HHMMSS>.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import traceback
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from raggedkv.closeness import compare

from .cli import Report, no_gpu_message, parse_args
from .environment import environment, has_cuda, header_line, one_cpu_thread, prepare_cpu_interpreter
from .results import build_doc, write_json
from .spec import KernelBench, Provider
from .table import METRIC_COLUMNS, Table, config_columns, config_widths
from .timing import Timer, copy_bandwidth, peak_extra_bytes


def run(bench: KernelBench, argv: Sequence[str] | None = None) -> Report:
    """Parse the CLI, then dry-run (check only) or benchmark `bench`; see the module docstring."""
    args = parse_args(bench.name, bench.title, argv, [p.name for p in bench.providers])
    if args.dry_run:
        prepare_cpu_interpreter()
    elif not has_cuda():
        print(no_gpu_message(bench.name, args.out), file=sys.stderr)
        return Report(2)
    with one_cpu_thread(args.dry_run and not has_cuda()):
        return run_parsed(bench, args)


def main(bench: KernelBench, argv: Sequence[str] | None = None) -> int:
    return run(bench, argv).exit_code


def available(providers: Sequence[Provider], wanted: Sequence[str] | None) -> tuple[list[Provider], dict[str, str]]:
    """(the providers asked for that can run here, {provider: why not} for those that cannot)."""
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


def run_parsed(bench: KernelBench, args: argparse.Namespace) -> Report:
    """The run itself, from parsed arguments (the timed path needs CUDA, or a stand-in `Timer` in tests)."""
    device = torch.device("cuda" if has_cuda() else "cpu")
    providers, skipped = available(bench.providers, args.providers)
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
