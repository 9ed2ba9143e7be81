"""The files a run writes: head scores in HeadKV's format, and a summary for the sidecar.

HeadKV's format (METHODS.md 1(a)): one line, one JSON object, keys `"<layer>-<head>"` in layer-major order at
query-head granularity, each value the list of that head's scores over the accepted trials (in grid order). Scores
are rounded to `DIGITS` decimals, far below the run-to-run noise of the attention itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ..atomic_io import write_atomically

DIGITS = 6


def head_score_lists(records: list[dict], num_layers: int, num_heads: int) -> dict[str, list[float]]:
    """`{"layer-head": [score per accepted trial]}` from trial records.

    Raises:
        ValueError: a record's scores are not `[num_layers][num_heads]`.
    """
    lists: dict[str, list[float]] = {f"{layer}-{head}": [] for layer in range(num_layers) for head in range(num_heads)}
    for record in records:
        if not record["accepted"]:
            continue
        scores = record["scores"]
        if len(scores) != num_layers or any(len(row) != num_heads for row in scores):
            raise ValueError(f"trial {record['id']} has scores for {len(scores)} layers x "
                             f"{len(scores[0]) if scores else 0} heads; the model has {num_layers} x {num_heads}")
        for layer, row in enumerate(scores):
            for head, value in enumerate(row):
                lists[f"{layer}-{head}"].append(round(value, DIGITS))
    return lists


def mean_table(lists: dict[str, list[float]], num_layers: int, num_heads: int) -> torch.Tensor:
    """Each head's mean score (0 for no accepted trial), fp64 `[num_layers, num_heads]`."""
    table = torch.zeros(num_layers, num_heads, dtype=torch.float64)
    for key, values in lists.items():
        layer, head = map(int, key.split("-"))
        table[layer, head] = sum(values) / len(values) if values else 0.0
    return table


def summarize(table: torch.Tensor, top: int = 10) -> dict:
    """Zero-score heads (count and fraction) and the `top` heads by mean score."""
    flat = table.flatten()
    order = flat.argsort(descending=True, stable=True)[:top]
    heads = table.shape[1]
    return {
        "heads": flat.numel(),
        "zero_score_heads": int((flat == 0).sum()),
        "zero_score_fraction": round(float((flat == 0).double().mean()), 4),
        "top_heads": [[f"{int(i) // heads}-{int(i) % heads}", round(float(flat[i]), DIGITS)] for i in order],
    }


def split_half_agreement(
    lists: dict[str, list[float]], needles: Sequence[int], top_fraction: float = 0.1
) -> dict | None:
    """How much the head scores depend on which needles were asked: the accepted trials split by needle (even- vs
    odd-numbered needles), each half's mean score per head, then the Pearson correlation of the two halves over the
    heads (HeadKV's budgets are proportional to the mean score) and how many of each half's top `top_fraction` heads
    are shared.

    Args:
        lists: `{"layer-head": [score per accepted trial]}` (`head_score_lists`).
        needles: the needle index of each accepted trial, in the lists' order.

    Returns:
        `{"split": "needles 0, 2 | 1", "trials": [a, b], "pearson": r, "top_heads_shared": [shared, top]}`;
        `pearson` is None when a half scores every head alike. None when the accepted trials come from fewer than
        two needles (no split is possible).

    Raises:
        ValueError: `needles` and a head's list differ in length.
    """
    lengths = sorted({len(values) for values in lists.values()})
    if lengths and lengths != [len(needles)]:
        raise ValueError(f"needles holds {len(needles)} needle indices, but the score lists hold {lengths[-1]} scores "
                         "(one per accepted trial)")
    groups = sorted(set(needles))
    if len(groups) < 2:
        return None
    first = torch.tensor([needle in groups[0::2] for needle in needles])
    scores = torch.tensor(list(lists.values()), dtype=torch.float64)  # [heads, trials]
    halves = scores[:, first].mean(dim=1), scores[:, ~first].mean(dim=1)
    spread = min(float(half.std()) for half in halves)
    pearson = round(float(torch.corrcoef(torch.stack(halves))[0, 1]), 4) if spread > 0 else None
    top = max(1, round(top_fraction * scores.shape[0]))
    tops = [set(half.argsort(descending=True, stable=True)[:top].tolist()) for half in halves]
    return {
        "split": "needles " + " | ".join(", ".join(map(str, groups[start::2])) for start in (0, 1)),
        "trials": [int(first.sum()), int((~first).sum())],
        "pearson": pearson,
        "top_heads_shared": [len(tops[0] & tops[1]), top],
    }


def write_json(path: Path, data: dict, indent: int | None = None) -> None:
    """Write `data` as JSON (one line unless `indent`) atomically, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(data, indent=indent) + "\n")
