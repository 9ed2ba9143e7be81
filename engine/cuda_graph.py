"""CUDA-graph decode: one decode step captured once per generation and replayed for every token.

Eager decode runs the transformers module stack in Python for every layer of every step, plus the launchers'
host-side argument checks; at small batches that host work, not the GPU, sets the pace. A CUDA graph records the
step's kernel launches once and replays them with one call. What makes the step capturable (`runner.ModelRunner`):

* it reads only static buffers: the token and position buffers (`runner.StepInputs`, written in place between
  steps), the cache's single K/V allocation, `kv_indptr` and `kv_lens` (advanced on the device by `append_kv`);
* nothing in it depends on a host value that changes between steps: the step counter and the headroom guard live
  in the runner, outside the step; `position_ids` are passed, so transformers derives no positions from
  `get_seq_length`; the ``"raggedkv"`` attention has no mask function, so no mask is built from it; the decode
  plan (`chunk_size`, `max_chunks`) is sized from segment capacities once per generation;
* it reads nothing back from the device (checked on the Triton interpreter under `forbid_host_sync`);
* its allocations (activations, the decode kernel's split-K scratch, the logits) come from the graph's private
  memory pool, so every replay writes the same addresses.

Sampling stays outside the graph (its random draws come from the caller's seeded generator, as in eager mode), and
so does the "all sequences finished?" check. The graph is tied to one cache (its addresses and decode plans),
hence captured once per generation: capture time is reported in the stats (`Decoded.capture_seconds`).

Before capture, the step runs `WARMUP_STEPS` times on a side stream (as `torch.cuda.graphs` asks: it compiles the
Triton kernels for these arguments and initialises cuBLAS outside the capture). A warm-up step appends to the cache,
so `kv_lens` is saved before and restored after: the rows it wrote lie past the restored lengths and are
overwritten by the first real step; kernels never read past `kv_lens`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

WARMUP_STEPS = 2  # eager steps before capture (lazy initialisation on the first calls; the torch docs use a few)
GRAPH = "cuda-graph"
EAGER = "eager"


def decode_mode(cuda_graph: bool, device: torch.device, backend_name: str) -> str:
    """How decode steps run: `GRAPH` when asked for, on CUDA, with the Triton backend; `EAGER` otherwise.

    The torch backend (the kernels' vectorised references) reads lengths back from the device, which a capture
    forbids; the CPU has no graphs.
    """
    if cuda_graph and device.type == "cuda" and backend_name == "triton":
        return GRAPH
    return EAGER


def warm_up(step: Callable[[], torch.Tensor], kv_lens: torch.Tensor, steps: int = WARMUP_STEPS) -> None:
    """Run `step` `steps` times, then put `kv_lens` (int32, every layer's segment lengths) back as it was.

    On CUDA the steps run on a side stream that the current stream then waits for (the warm-up the CUDA-graph docs
    prescribe); elsewhere they run in place (so the state restoration is testable on the CPU).
    """
    saved = kv_lens.clone()

    def run() -> None:
        for _ in range(steps):
            step()
        kv_lens.copy_(saved)

    if kv_lens.device.type != "cuda":
        run()
        return
    side = torch.cuda.Stream(device=kv_lens.device)
    side.wait_stream(torch.cuda.current_stream(kv_lens.device))
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream(kv_lens.device).wait_stream(side)


class DecodeGraph:
    """One decode step captured as a CUDA graph.

    inputs: the object holding the static buffers the step reads (kept to check that later calls feed the same).
    logits: the graph's static `[batch, vocab]` output, overwritten by every `replay`.
    capture_seconds: wall time of warm-up plus capture, synchronised.
    """

    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: object, logits: torch.Tensor, seconds: float) -> None:
        self.graph, self.inputs, self.logits, self.capture_seconds = graph, inputs, logits, seconds

    @classmethod
    def capture(cls, step: Callable[[], torch.Tensor], inputs: object, kv_lens: torch.Tensor) -> DecodeGraph:
        """Warm `step` up (`warm_up`), then capture one call of it; the cache is left as it was (nothing runs
        during a capture). `step` must read only static buffers (`inputs`, the cache) and return the logits."""
        device = kv_lens.device
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        warm_up(step, kv_lens)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = step()
        torch.cuda.synchronize(device)
        return cls(graph, inputs, logits, time.perf_counter() - start)

    def replay(self) -> torch.Tensor:
        """Run the captured step on what the static buffers hold now -> the static logits `[batch, vocab]`."""
        self.graph.replay()
        return self.logits
