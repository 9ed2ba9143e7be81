"""The issue's performance targets, read from benchmark JSON files (reported, never asserted).

    python -m bench.targets bench/results/*.json

1. decode: `triton` at >= 80% of the measured copy bandwidth once a call touches >= 64 MiB;
2. skew: skewed budgets within 1.15x of uniform ones at the same total (`triton`, same model/batch/kv_size);
3. scoring: `triton` window scoring under 2% of the layer's prefill attention at 32K tokens;
4. end to end, at 32K prompt tokens with kv_size 128: decode tokens/s at batch 1 at least 2x the full cache
   (transformers, static cache), and the best tokens/s over the batches run at least 10x the best any full-cache
   row reached; CUDA graph vs eager tokens/s is reported beside them.
Each line gives the measured value, the target, and the worst config when it is missed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MIB = 1 << 20


def _verdict(ok: bool, missed_by: str) -> str:
    return "met" if ok else f"missed by {missed_by}"


def _key(row: dict[str, Any], *fields: str) -> tuple:
    return tuple(row["config"].get(f) for f in fields)


def decode_targets(doc: dict[str, Any]) -> list[str]:
    rows = [r for r in doc["rows"] if r["provider"] == "triton" and r.get("ms_p50")]
    lines = []
    big = [r for r in rows if r["bytes"] >= 64 * MIB and r.get("frac_copy") is not None]
    if big:
        worst = min(big, key=lambda r: r["frac_copy"])
        frac = worst["frac_copy"]
        lines.append(f"decode bandwidth (>= 64 MiB, {len(big)} configs): worst {frac:.2f} of copy "
                     f"({worst['gbps']:.0f} GB/s at {worst['bytes'] / MIB:.0f} MiB, {worst['config']}), target 0.80: "
                     + _verdict(frac >= 0.8, f"{0.8 - frac:.2f}"))
    uniform = {_key(r, "model", "batch", "prompt", "kv_size"): r for r in rows if r["config"]["budgets"] == "uniform"}
    ratios = [(r["ms_p50"] / uniform[k]["ms_p50"], r) for r in rows if r["config"]["budgets"] == "skew"
              and (k := _key(r, "model", "batch", "prompt", "kv_size")) in uniform]
    if ratios:
        ratio, worst = max(ratios, key=lambda x: x[0])
        lines.append(f"decode skew/uniform time ({len(ratios)} pairs): worst {ratio:.2f}x "
                     f"(max/mean {worst['config'].get('max/mean')}, {worst['config']}), target <= 1.15x: "
                     + _verdict(ratio <= 1.15, f"{ratio - 1.15:.2f}x"))
    return lines


def scoring_targets(doc: dict[str, Any]) -> list[str]:
    rows = [r for r in doc["rows"] if r["provider"] == "triton" and r["config"]["prompt"] == 32768
            and r.get("pct_prefill") is not None]
    return [f"scoring at 32K ({r['config']['model']}, window {r['config']['window']}): {r['pct_prefill']:.2f}% of "
            f"prefill attention ({r['ms_p50'] * 1e3:.0f} us), target < 2%: "
            + _verdict(r["pct_prefill"] < 2, f"{r['pct_prefill'] - 2:.2f} points") for r in rows]


def e2e_targets(doc: dict[str, Any]) -> list[str]:
    """At 32K prompt tokens and kv_size 128, per engine method and decode mode: tok/s at batch 1 vs transformers'
    static full cache at batch 1 (>= 2x), and the best tok/s over the batches run (the largest that fits) vs the
    best any full-cache row reached (>= 10x); then graph vs eager tok/s at each batch (reported, no target)."""
    rows = [r for r in doc["rows"] if r["config"]["prompt"] == 32768 and r.get("decode_tok_s")]
    full = [r for r in rows if r["provider"].startswith("hf_")]
    engine = [r for r in rows if not r["provider"].startswith("hf_") and r["config"]["kv_size"] == 128]
    lines = []
    for key in dict.fromkeys((r["config"]["model"], r["provider"], r.get("mode")) for r in engine):
        mine = [r for r in engine if (r["config"]["model"], r["provider"], r.get("mode")) == key]
        name = f"e2e at 32K, kv_size 128, {key[0]} {key[1]} ({key[2]})"
        one = next((r for r in mine if r["config"]["batch"] == 1 and r.get("speedup")), None)
        if one:
            lines.append(f"{name}, batch 1: {one['decode_tok_s']:.1f} tok/s = {one['speedup']:.2f}x the full cache, "
                         "target >= 2x: " + _verdict(one["speedup"] >= 2, f"{2 - one['speedup']:.2f}x"))
        best_full = max((r for r in full if r["config"]["model"] == key[0]), key=lambda r: r["decode_tok_s"],
                        default=None)
        if best_full:
            best = max(mine, key=lambda r: r["decode_tok_s"])
            ratio = best["decode_tok_s"] / best_full["decode_tok_s"]
            lines.append(f"{name}, best batch {best['config']['batch']}: {best['decode_tok_s']:.0f} tok/s = "
                         f"{ratio:.1f}x the best full cache ({best_full['provider']}, batch "
                         f"{best_full['config']['batch']}: {best_full['decode_tok_s']:.0f} tok/s), target >= 10x: "
                         + _verdict(ratio >= 10, f"{10 - ratio:.1f}x"))
    by_mode = {(r["config"]["model"], r["provider"], r["config"]["kv_size"], r["config"]["batch"], r.get("mode")): r
               for r in rows}
    for (model, provider, kv_size, batch, mode), graph in by_mode.items():
        eager = by_mode.get((model, provider, kv_size, batch, "eager"))
        if mode == "cuda-graph" and eager:
            lines.append(f"e2e at 32K, {model} {provider} kv_size {kv_size} batch {batch}: CUDA graph "
                         f"{graph['decode_tok_s'] / eager['decode_tok_s']:.2f}x eager tok/s (no target)")
    return lines


READERS = {"decode": decode_targets, "scoring": scoring_targets, "e2e": e2e_targets}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.targets", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.files:
        doc = json.loads(path.read_text(encoding="utf-8"))
        reader = READERS.get(doc.get("bench"))
        if reader is None:
            continue
        graph = " (CUDA graphs)" if doc.get("timing", {}).get("cuda_graph") else ""
        print(f"{path.name}{graph}: {doc['env'].get('gpu')}, `{doc['env'].get('command')}`")
        for line in reader(doc) or ["no rows that bear on a target"]:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
