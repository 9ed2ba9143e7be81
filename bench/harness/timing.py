"""Timing on the GPU: cold-L2 CUDA-event timing of one call (eager or a CUDA-graph replay), the device copy
bandwidth that is the ceiling of every memory-bound kernel, and the peak memory one call allocates.

Timing: CUDA events around each call, median/p20/p80 of `reps` calls after `warmup_ms` of warm-up; before every
timed call a 256 MiB buffer is written, which evicts the 50 MB L2 of an H100 (cold L2); `cuda_graph=True` replays a
captured graph of the call instead of launching it eagerly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

QUANTILES = (0.5, 0.2, 0.8)
FLUSH_BYTES = 256 << 20
COPY_BYTES = 512 << 20


@dataclass(slots=True)
class Measurement:
    """Time of one call in ms: median, 20th and 80th percentile over `reps` calls; whether it was a graph replay."""

    ms_p50: float
    ms_p20: float
    ms_p80: float
    reps: int
    cuda_graph: bool


def capture_graph(fn: Callable[[], Any], reset: Callable[[], None]) -> Callable[[], Any] | None:
    """The replay of a CUDA graph of one `fn()` call, or None when `fn` cannot be captured (host syncs, CPU work)."""
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
        """The JSON `timing` object."""
        return {
            "method": "cuda_events",
            "warmup_ms": self.warmup_ms,
            "rep_ms": self.rep_ms,
            "reps": [self.min_reps, self.max_reps],
            "quantiles": list(QUANTILES),
            "cuda_graph": self.cuda_graph,
            "cold_l2": f"{FLUSH_BYTES >> 20} MiB buffer written before every timed call",
        }

    def summary(self) -> str:
        """How it times, for the header line."""
        how = "CUDA-graph replay" if self.cuda_graph else "eager launches"
        return (f"timing: CUDA events, {how}, p50/p20/p80 of {self.min_reps}-{self.max_reps} calls "
                f"(~{self.rep_ms:g} ms) after {self.warmup_ms:g} ms warm-up, L2 flushed ({FLUSH_BYTES >> 20} MiB) "
                "before each call")

    def __call__(self, fn: Callable[[], Any], reset: Callable[[], None] | None = None) -> Measurement:
        reset = reset or (lambda: None)
        if self._flush is None:
            self._flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
        run = capture_graph(fn, reset) if self.cuda_graph else None
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
            "how": f"dst.copy_(src) of {nbytes >> 20} MiB on the same device, read + write counted, same timer"}


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
