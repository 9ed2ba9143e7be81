"""pytest-benchmark over the four kernels on small shapes, comparable on either machine.

    python -m pytest bench/ --benchmark-only -q

On a GPU each test times the Triton launcher (provider `triton` of the bench, CUDA-synchronised after every call)
after checking it against the reference; without one it times the pure-torch reference on the CPU (the engine's
`torch` backend). The cases are built by the benches' own case factories, so shapes and inputs match theirs.
These tests live in bench/, so `pytest tests` never collects them. Real timings go to bench/results/ only through
the benches themselves; pytest-benchmark keeps its own numbers (see --benchmark-autosave, .benchmarks/ is ignored).
"""

from __future__ import annotations

import pytest
import torch

from bench import bench_append, bench_decode, bench_scoring, bench_select
from raggedkv.closeness import compare

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
PROVIDER = "triton" if CUDA else "torch_ref"
BACKEND = "triton" if CUDA else "torch"

CASES = [
    pytest.param(bench_decode, bench_decode._config("llama3-8b", 4, 4096, 512, d), id=f"decode-llama3-b4-kv512-{d}")
    for d in ("uniform", "skew")
] + [
    pytest.param(bench_decode, bench_decode._config("smollm2-135m", 4, 4096, 512, "skew"), id="decode-smollm2-b4-skew"),
    pytest.param(bench_scoring, {"model": "llama3-8b", "prompt": 2048, "window": 32}, id="scoring-llama3-n2048-w32"),
    pytest.param(bench_scoring, {"model": "smollm2-135m", "prompt": 2048, "window": 32}, id="scoring-smollm2-n2048"),
    pytest.param(bench_select, bench_select._config("llama3-8b", 1, 4096, 512, "skew"), id="select-llama3-n4096-kv512"),
    pytest.param(bench_append, {"model": "llama3-8b", "batch": 4, "kv_size": 2048}, id="append-llama3-b4-kv2048"),
]


@pytest.mark.parametrize(("module", "config"), CASES)
def test_kernel(benchmark, module, config) -> None:
    bench = module.BENCH
    provider = next(p for p in bench.providers if p.name == PROVIDER)
    reason = provider.requires()
    if reason:
        pytest.fail(f"{PROVIDER} cannot run: {reason}")
    torch.manual_seed(0)
    case = bench.make_case(config, DEVICE)
    bound = provider.setup(case)
    reset = bound.reset or (lambda: None)
    if CUDA:  # the launcher must agree with the reference before its time means anything
        expected = bench.references[provider.ref](case)
        reset()
        out = bound.fn()
        err, ok = compare(bound.result() if bound.result else out, expected, bench.rtol)
        assert ok, f"{PROVIDER} on {config}: max abs error {err:.3e}"

    def call() -> None:
        bound.fn()
        if CUDA:
            torch.cuda.synchronize()

    benchmark.group = f"{bench.name} ({BACKEND} on {DEVICE.type})"
    benchmark.extra_info.update(backend=BACKEND, provider=PROVIDER, **{k: str(v) for k, v in config.items()})
    benchmark.pedantic(call, setup=reset, rounds=20 if CUDA else 5, warmup_rounds=1)
