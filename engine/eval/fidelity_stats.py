"""Summaries of fidelity records: means with standard errors clustered by fact, and paired differences against a
baseline method at the same kv_size.

Clustered standard error of a mean of `N` values in `G` clusters (the facts): with `r_g` the sum of cluster `g`'s
deviations from the mean, `SE = sqrt(G / (G - 1) * sum_g r_g^2) / N` (the CR1 sandwich estimator of a mean; with
equal cluster sizes it is the standard error of the `G` cluster means). It is NaN with fewer than two clusters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .report import group

METRICS = ("answer_logprob", "kl", "top1", "needle_kept", "needle_kept_top")
PROBE_FIELDS = ("length", "depth", "fact")


def clustered_mean(values: Sequence[float], clusters: Sequence[object]) -> tuple[float, float]:
    """(mean, its clustered standard error) of `values`, `clusters[i]` naming the cluster of `values[i]`."""
    if len(values) != len(clusters):
        raise ValueError(f"values has {len(values)} entries but clusters has {len(clusters)}")
    if not values:
        return math.nan, math.nan
    mean = math.fsum(values) / len(values)
    residuals: dict[object, float] = {}
    for value, cluster in zip(values, clusters):
        residuals[cluster] = residuals.get(cluster, 0.0) + value - mean
    count = len(residuals)
    if count < 2:
        return mean, math.nan
    return mean, math.sqrt(count / (count - 1) * math.fsum(r * r for r in residuals.values())) / len(values)


def paired_differences(records: Sequence[dict], baseline: str, metric: str = "answer_logprob") -> dict:
    """(method, kv_size) -> (mean difference, clustered SE, pairs) of `metric` minus the `baseline` method's on the
    same probe (length, depth, fact) at the same kv_size; cells without a baseline at their kv_size are left out."""
    base = {(r["kv_size"], *(r[f] for f in PROBE_FIELDS)): r[metric] for r in records if r["method"] == baseline}
    out = {}
    for (method, kv_size), items in group(records, ("method", "kv_size")).items():
        pairs = [(r[metric] - base[key], r["fact"]) for r in items
                 if (key := (kv_size, *(r[f] for f in PROBE_FIELDS))) in base]
        if pairs and method != baseline:
            out[method, kv_size] = (*clustered_mean([d for d, _ in pairs], [c for _, c in pairs]), len(pairs))
    return out


def summary(records: Sequence[dict], baseline: str) -> tuple[list[str], list[list]]:
    """One row per (method, kv_size): n, each metric's mean and clustered SE (`top1` and the kept shares in %),
    and the paired difference in answer log-probability against `baseline` with its SE and t = diff / SE."""
    diffs = paired_differences(records, baseline)
    columns = ["method", "kv_size", "n", "logprob", "se", f"d_vs_{baseline}", "d_se", "t", "kl", "kl_se",
               "top1_%", "needle_kept_%", "top_heads_kept_%", "kv_kept_%"]
    rows = []
    for (method, kv_size), items in group(records, ("method", "kv_size")).items():
        facts = [r["fact"] for r in items]
        stats = {m: clustered_mean([r[m] for r in items], facts) for m in METRICS}
        diff, diff_se, _ = diffs.get((method, kv_size), (None, None, 0))
        t = diff / diff_se if diff is not None and diff_se and not math.isnan(diff_se) else None
        rows.append([
            method, kv_size, len(items), *stats["answer_logprob"], diff, diff_se, t, *stats["kl"],
            100 * stats["top1"][0], 100 * stats["needle_kept"][0], 100 * stats["needle_kept_top"][0],
            100 * math.fsum(r["kept_fraction"] for r in items) / len(items),
        ])
    return columns, rows


def versus(records: Sequence[dict], method: str, margin: float = 2.0) -> tuple[list[str], list[list]]:
    """`method` minus each other compressed method (not `full`), one row per kv_size `method` was measured at.

    A cell reads `"+d ± se (t)"`: the mean paired difference in answer log-probability on the same probes, its SE
    clustered by fact and `t = d / se`. `beta` is the beta `method` ran with (the records' `beta`; several values
    joined by "/" when they differ across records). The last column names the methods `method` is not ahead of
    by more than `margin` SEs ("-": it leads every one by more).
    """
    kv_sizes = sorted({r["kv_size"] for r in records if r["method"] == method and r["kv_size"] is not None})
    others = list(dict.fromkeys(r["method"] for r in records if r["method"] not in (method, "full")))
    columns = ["kv_size", "beta", *others, f"not ahead by > {margin:g} SE"]
    rows = []
    for kv_size in kv_sizes:
        mine = [r for r in records if r["method"] == method and r["kv_size"] == kv_size]
        betas = sorted({r.get("beta") for r in mine if r.get("beta") is not None})
        cells, short = [], []
        for other in others:
            pair = [r for r in records if r["method"] in (method, other) and r["kv_size"] == kv_size]
            diff = paired_differences(pair, other).get((method, kv_size))
            d, se, _ = diff if diff is not None else (math.nan, math.nan, 0)
            t = d / se if se and not math.isnan(se) else math.nan
            cells.append("-" if diff is None else f"{d:+.1f} ± {se:.1f} ({t:+.1f})")
            if not t > margin:
                short.append(other)
        rows.append([kv_size, "/".join(f"{b:g}" for b in betas) or "-", *cells, ", ".join(short) or "-"])
    return columns, rows
