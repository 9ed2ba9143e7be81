"""Summaries of result records: grouped means and fixed-width tables."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class EvalResult:
    """What an evaluation run returns: its records, the summary table (also as text) and the files it wrote."""

    records: list[dict]
    columns: list[str]
    rows: list[list]
    table: str
    files: list[Path] = field(default_factory=list)


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean (NaN for no values)."""
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def group(records: Iterable[dict], fields: Sequence[str]) -> dict[tuple, list[dict]]:
    """Records grouped by the values of `fields`, groups in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault(tuple(record[field] for field in fields), []).append(record)
    return groups


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def format_table(columns: Sequence[str], rows: Iterable[Sequence[object]], title: str | None = None) -> str:
    """A fixed-width table: text columns left-aligned, numbers right-aligned, floats with two decimals."""
    rows = [list(row) for row in rows]
    text = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(name)] + [len(row[i]) for row in text]) for i, name in enumerate(columns)]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) for i in range(len(columns))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    out = ([title] if title else []) + [line(columns)] + [line(row) for row in text]
    return "\n".join(out)


def summary_rows(
    records: Sequence[dict], metrics: dict[str, Callable[[list[dict]], float | None]]
) -> tuple[list[str], list[list[object]]]:
    """One row per (method, kv_size) in first-seen order: the record count and each metric over the group."""
    columns = ["method", "kv_size", "n", *metrics]
    rows = [
        [method, kv_size, len(items), *(fn(items) for fn in metrics.values())]
        for (method, kv_size), items in group(records, ("method", "kv_size")).items()
    ]
    return columns, rows


def percent_of(field: str) -> Callable[[list[dict]], float]:
    """A metric: 100 x the mean of a numeric or boolean record field."""
    return lambda items: 100 * mean(float(item[field]) for item in items)


def retained_vs_full(
    records: Sequence[dict], probe_fields: Sequence[str], value: str = "correct"
) -> Callable[[list[dict]], float | None] | None:
    """A metric: of the probes the `full` method answers correctly, the % a group also answers correctly (the
    accuracy kept relative to the full cache). None for a group that shares no such probe, and instead of the
    metric when `records` hold no `full` record."""
    full = [r for r in records if r["method"] == "full"]
    if not full:
        return None
    solved = {tuple(r[f] for f in probe_fields) for r in full if r[value]}

    def metric(items: list[dict]) -> float | None:
        hits = [float(item[value]) for item in items if tuple(item[f] for f in probe_fields) in solved]
        return 100 * mean(hits) if hits else None

    return metric
