"""The benchmarks' dry runs: every provider checked on tiny shapes, in process, and nothing written to
bench/results/ without a GPU (only numbers from real GPU runs may land there)."""

from __future__ import annotations

import importlib
import time

import pytest
import torch

from bench.harness import kernel_run
from bench.harness.results import RESULTS_DIR

KERNEL_BENCHES = ("bench.bench_decode", "bench.bench_scoring", "bench.bench_select", "bench.bench_append")
ALL_BENCHES = (*KERNEL_BENCHES, "bench.bench_e2e")


def _results() -> set[str]:
    return {str(p.relative_to(RESULTS_DIR)) for p in RESULTS_DIR.rglob("*")} if RESULTS_DIR.exists() else set()


def test_every_dry_run_checks_every_provider_and_writes_nothing() -> None:
    before = _results()
    cpu_start, wall_start = time.process_time(), time.monotonic()
    for name in KERNEL_BENCHES:
        bench = importlib.import_module(name).BENCH
        report = kernel_run.run(bench, ["--dry-run"])
        assert report.exit_code == 0, f"{name} --dry-run failed (see the captured output)"
        available = {p.name for p in bench.providers if p.requires() is None}
        assert "triton" in available, f"{name}: the Triton launcher is not importable"
        ran = {r["provider"] for r in report.doc["rows"] if r["check"] in ("ok", "ran")}
        assert ran == available, f"{name}: providers {sorted(available - ran)} did not run cleanly"
        assert all(r["check"] == "ok" for r in report.doc["rows"] if r["provider"] == "triton")
        assert report.path is None

    e2e = importlib.import_module("bench.bench_e2e")
    report = e2e.run(["--dry-run"])
    assert report.exit_code == 0, "bench_e2e --dry-run failed (see the captured output)"
    rows = report.doc["rows"]
    assert [r for r in rows if r["check"] != "ok"] == [], "bench_e2e --dry-run rows that are not ok"
    grid = e2e.GRIDS["dry"]
    for model in grid.models:  # every provider at every batch (each batch filled with copies of one prefill)
        ran = [(r["provider"], r["config"]["batch"]) for r in rows if r["config"]["model"] == model]
        assert ran == [(p, b) for p in grid.providers for b in grid.batches], model
        assert {r["mode"] for r in rows if r["config"]["model"] == model} == {"eager"}  # no CUDA graphs on a CPU
    for model in (c["model"] for c in e2e.PLAN_CONFIGS):
        assert [r["provider"] for r in rows if r["config"]["model"] == model] == grid.providers, model
    planned = {(r["config"]["model"], r["provider"]): r["scores"] for r in rows if r["config"]["new_tokens"] == 0}
    for model in ("llama3-8b", "mistral-7b"):
        assert {planned[model, m] for m in ("headkv-r", "headkv-r2", "compresskv")} == {"synthetic"}, model
    assert {planned["smollm2-135m", m] for m in ("headkv-r", "headkv-r2", "compresskv")} == {"packaged"}
    assert report.path is None

    cpu, wall = time.process_time() - cpu_start, time.monotonic() - wall_start
    if not torch.cuda.is_available():  # on a GPU, Triton's first compilations dominate instead
        assert cpu < 60, f"the dry runs took {cpu:.0f} s of CPU ({wall:.0f} s wall); keep them under a minute"
    assert _results() == before, "a dry run wrote into bench/results/"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
@pytest.mark.parametrize("name", ALL_BENCHES)
def test_without_gpu_a_bench_says_so_and_writes_nothing(name: str, capsys: pytest.CaptureFixture) -> None:
    before = _results()
    assert importlib.import_module(name).main(["--quick"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert _results() == before
