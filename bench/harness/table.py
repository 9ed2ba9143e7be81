"""The fixed-width, right-aligned table every bench prints, and the metric columns read from its JSON rows."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

MIB = 1 << 20

Column = tuple[str, Callable[[dict[str, Any]], Any], str]  # (printed name, value from a JSON row, format)


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

    def __init__(self, columns: Sequence[Column], widths: dict[str, int] | None = None,
                 stream: TextIO | None = None):
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


def config_columns(configs: Sequence[dict[str, Any]]) -> list[Column]:
    """One column per config key (first-seen order), read from a row's `config`."""
    names: list[str] = []
    for config in configs:
        names.extend(k for k in config if k not in names)
    return [(name, (lambda r, n=name: r["config"].get(n)), "{}") for name in names]


def config_widths(configs: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Column width per config key: its longest printed value."""
    widths: dict[str, int] = {}
    for config in configs:
        for k, v in config.items():
            widths[k] = max(widths.get(k, 0), len(str(v)))
    return widths
