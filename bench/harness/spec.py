"""What a kernel benchmark (`bench_decode`, `bench_scoring`, `bench_select`, `bench_append`) declares.

A `KernelBench` has its configs, a case factory (the inputs of one config), providers (each turns a case into a
`Bound` zero-argument call), references, and byte/FLOP formulas; `kernel_run.run` does everything else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


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
    """What a `bench_<op>.py` defines; `kernel_run.run` does the rest.

    configs: mode ("dry", "quick", "full") -> list of config dicts (the printed config columns, in order).
    make_case: (config, device) -> the case object the providers and references read.
    references: name -> (case -> expected output).
    baseline: provider ids in order of preference; the first available one is the speedup denominator (e.g. the
        `flash_attn` baseline where it is installed, else torch SDPA).
    metrics: printed metric columns (see `table.METRIC_COLUMNS`).
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
