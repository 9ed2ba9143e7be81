"""PNG plots drawn from benchmark JSON files (never from anything else).

    python -m bench.plot bench/results/decode-h100-80gb-hbm3-20261122-101500.json [...] [--out DIR]

Each JSON gives one PNG with the same name next to it (or in `--out`). What is drawn depends on the bench:
decode = achieved GB/s against bytes read (with the measured copy bandwidth) and the speedup over full-cache
FlashAttention against prompt length; scoring = time and peak extra memory against prompt length; select and append
= time against prompt length / cache size; e2e = the HeadKV paper's Figure 6 layout (decode latency and peak memory
against prompt length, per method), plus time to first token.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.harness.results import SCHEMA  # noqa: E402

Row = dict[str, Any]


def _series(rows: Sequence[Row], x: Callable[[Row], Any], y: Callable[[Row], Any],
            group: Callable[[Row], Any]) -> dict[Any, list[tuple[Any, Any]]]:
    """{group: [(x, y), ...] sorted by x} over the rows whose x and y are known (duplicates dropped)."""
    out: dict[Any, set[tuple[Any, Any]]] = defaultdict(set)
    for r in rows:
        xv, yv = x(r), y(r)
        if xv is not None and yv is not None:
            out[group(r)].add((xv, yv))
    return {g: sorted(points) for g, points in sorted(out.items(), key=lambda kv: str(kv[0]))}


def _lines(ax, series: dict[Any, list[tuple[Any, Any]]], label: Callable[[Any], str] = str, **style) -> None:
    for g, points in series.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", markersize=3, label=label(g), **style)


def _cfg(key: str) -> Callable[[Row], Any]:
    return lambda r: r["config"].get(key)


def _ms(r: Row) -> float | None:
    return r.get("ms_p50")


def _title(doc: dict[str, Any], what: str) -> str:
    env = doc["env"]
    return f"{what} - {env.get('gpu') or 'CPU'}, torch {env['torch']}, git {(env.get('git_sha') or '?')[:8]}"


def _axes(ax, xlabel: str, ylabel: str, log_y: bool = True) -> None:
    ax.set_xscale("log", base=2)
    if log_y:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def plot_decode(doc: dict[str, Any]):
    rows = [r for r in doc["rows"] if r.get("ms_p50")]
    fig, (ax_bw, ax_sp) = plt.subplots(1, 2, figsize=(14, 5.5))
    series = _series(rows, lambda r: r["bytes"] / 2**20, lambda r: r.get("gbps"),
                     lambda r: (r["provider"], r["config"]["budgets"]))
    colors = {p: f"C{i}" for i, p in enumerate(dict.fromkeys(r["provider"] for r in rows))}
    for (provider, budgets), points in series.items():
        xs, ys = zip(*points)
        ax_bw.scatter(xs, ys, s=12, color=colors[provider], marker="o" if budgets == "uniform" else "x",
                      label=f"{provider} ({budgets})")
    ceiling = (doc.get("ceiling") or {}).get("gbps")
    if ceiling:
        ax_bw.axhline(ceiling, color="k", lw=1, label=f"measured copy {ceiling:.0f} GB/s")
        ax_bw.axhline(0.8 * ceiling, color="k", lw=1, ls="--", label="80% of copy (target from 64 MiB)")
    ax_bw.axvline(64, color="grey", lw=0.8, ls=":")
    _axes(ax_bw, "MiB touched per call", "GB/s (1e9 B/s)", log_y=False)
    ax_bw.set_title("achieved bandwidth, one decode step of one layer")

    ours = [r for r in rows if r["provider"] == "triton" and r["config"]["model"] == "llama3-8b" and r.get("speedup")]
    for budgets, ls in (("uniform", "-"), ("skew", "--")):
        sel = [r for r in ours if r["config"]["budgets"] == budgets]
        _lines(ax_sp, _series(sel, _cfg("prompt"), lambda r: r["speedup"],
                              lambda r: (r["config"]["batch"], r["config"]["kv_size"])),
               label=lambda g, b=budgets: f"batch {g[0]}, kv_size {g[1]}, {b}", ls=ls)
    _axes(ax_sp, "prompt tokens (full-cache length)", f"speedup vs {doc.get('baseline')}")
    ax_sp.set_title("triton ragged decode vs full-cache FlashAttention (llama3-8b shape)")
    fig.suptitle(_title(doc, "bench_decode"))
    return fig


def plot_scoring(doc: dict[str, Any]):
    rows = [r for r in doc["rows"] if r["config"]["model"] == "llama3-8b"]
    windows = sorted({r["config"]["window"] for r in rows})
    window = 32 if 32 in windows else (windows[0] if windows else None)
    rows = [r for r in rows if r["config"]["window"] == window]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 5))
    _lines(ax_t, _series(rows, _cfg("prompt"), _ms, lambda r: r["provider"]))
    _axes(ax_t, "prompt tokens", "ms per layer (p50)")
    ax_t.set_title(f"window scoring, one layer, llama3-8b shape, window {window}")
    _lines(ax_m, _series(rows, _cfg("prompt"), lambda r: r.get("peak_extra_bytes") and r["peak_extra_bytes"] / 2**20,
                         lambda r: r["provider"]))
    _axes(ax_m, "prompt tokens", "peak extra MiB per call")
    ax_m.set_title("extra memory of one call")
    fig.suptitle(_title(doc, "bench_scoring"))
    return fig


def plot_select(doc: dict[str, Any]):
    rows = [r for r in doc["rows"] if r["config"]["model"] == "llama3-8b" and r["config"]["batch"] == 1]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, budgets in zip(axes, ("uniform", "skew")):
        sel = [r for r in rows if r["config"]["budgets"] == budgets]
        _lines(ax, _series(sel, _cfg("prompt"), _ms, lambda r: (r["provider"], r["config"]["kv_size"])),
               label=lambda g: f"{g[0]}, kv_size {g[1]}")
        _axes(ax, "prompt tokens", "ms per layer (p50)")
        ax.set_title(f"select + pack, one layer, 8 KV heads, {budgets} budgets")
    fig.suptitle(_title(doc, "bench_select"))
    return fig


def plot_append(doc: dict[str, Any]):
    rows = [r for r in doc["rows"] if r["config"]["model"] == "llama3-8b"]
    fig, ax = plt.subplots(figsize=(8, 5))
    _lines(ax, _series(rows, _cfg("kv_size"), lambda r: _ms(r) and _ms(r) * 1e3,
                       lambda r: (r["provider"], r["config"]["batch"])),
           label=lambda g: f"{g[0]}, batch {g[1]}")
    _axes(ax, "tokens per segment before the append", "us per layer (p50)")
    ax.set_title("append one token to one layer, llama3-8b shape")
    fig.suptitle(_title(doc, "bench_append"), fontsize=9)
    return fig


def plot_e2e(doc: dict[str, Any]):
    rows = [r for r in doc["rows"] if r.get("check") == "ok"]
    models = list(dict.fromkeys(r["config"]["model"] for r in doc["rows"]))
    fig, axes = plt.subplots(len(models), 3, figsize=(16, 4.5 * len(models)), squeeze=False)
    panels = (("ms_per_token", "decode latency, ms per token", lambda r: r.get("ms_per_token")),
              ("peak", "peak GPU memory, GiB", lambda r: r.get("peak_bytes") and r["peak_bytes"] / 2**30),
              ("ttft", "time to first token, s", lambda r: r.get("ttft_ms") and r["ttft_ms"] / 1e3))
    for row_axes, model in zip(axes, models):
        sel = [r for r in rows if r["config"]["model"] == model and r["config"].get("batch", 1) == 1]
        for ax, (_, ylabel, get) in zip(row_axes, panels):
            _lines(ax, _series(sel, _cfg("prompt"), get,
                               lambda r: r["provider"] if r["provider"].startswith("hf_")
                               else f"{r['provider']} (kv_size {r['config']['kv_size']}, {r.get('mode')})"))
            _axes(ax, "prompt tokens", ylabel, log_y=False)
            ax.set_title(f"{model} (random {doc['timing'].get('dtype')} weights), batch 1", fontsize=9)
    fig.suptitle(_title(doc, "bench_e2e: decode latency and peak memory per method (HeadKV Figure 6 layout)"))
    return fig


PLOTTERS = {"decode": plot_decode, "scoring": plot_scoring, "select": plot_select, "append": plot_append,
            "e2e": plot_e2e}


def plot_file(path: Path, out_dir: Path | None = None) -> Path:
    """Draw one benchmark JSON into `<out_dir or its folder>/<its name>.png`; returns the PNG's path."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {doc.get('schema')!r} is not {SCHEMA!r}")
    if doc.get("bench") not in PLOTTERS:
        raise ValueError(f"{path}: no plot for bench {doc.get('bench')!r}; known: {sorted(PLOTTERS)}")
    fig = PLOTTERS[doc["bench"]](doc)
    fig.tight_layout()
    target = (Path(out_dir) if out_dir else Path(path).parent) / (Path(path).stem + ".png")
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plot", description="PNG plots from benchmark JSON files")
    parser.add_argument("files", nargs="+", type=Path, help="bench/results/*.json files")
    parser.add_argument("--out", type=Path, help="folder for the PNGs (default: next to each JSON)")
    args = parser.parse_args(argv)
    for path in args.files:
        print(f"wrote {plot_file(path, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
