"""The benchmark harness's own logic: budgets, the reference comparison, the table, the JSON file, byte formulas,
the CLI, the e2e bench's score lookup and the plots (drawn here from a document built in a temporary folder, never
from bench/results/)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench import bench_decode, bench_e2e, plot
from bench.harness import kernel_run
from bench.harness.budgets import head_budgets
from bench.harness.cli import parse_args
from bench.harness.environment import environment, gpu_slug, one_cpu_thread
from bench.harness.results import SCHEMA, build_doc, write_json
from bench.harness.shapes import attention_shape
from bench.harness.spec import Bound, Provider
from bench.harness.table import METRIC_COLUMNS, Table, config_columns, config_widths
from bench.harness.timing import Measurement
from raggedkv.closeness import assert_close, compare
from raggedkv.engine.compress import plan_budgets
from raggedkv.engine.methods import METHODS, get_method, method_parameters
from raggedkv.engine.methods.head_scores import HEAD_SCORE_KINDS, kinds_read_by


@pytest.mark.parametrize("dist", ["uniform", "skew"])
def test_head_budgets_keep_the_total_and_the_bounds(dist: str) -> None:
    budgets = head_budgets("llama3-8b", 3, 400, 128, dist, window=8, seed=1)
    assert len(budgets) == 24
    for seq in range(3):
        heads = budgets[seq * 8:(seq + 1) * 8]
        assert sum(heads) == 128 * 8
        assert all(8 <= b <= 400 for b in heads)
    if dist == "skew":
        assert max(budgets) / (sum(budgets) / len(budgets)) > 1.5
        assert budgets[:8] != budgets[8:16]  # every sequence draws its own importance
    assert budgets == head_budgets("llama3-8b", 3, 400, 128, dist, window=8, seed=1)


def test_head_budgets_cap_at_the_prompt_and_redistribute() -> None:
    budgets = head_budgets("smollm2-135m", 1, 120, 100, "skew", window=8, seed=0, alpha=0.05)
    assert sum(budgets) == 300 and max(budgets) <= 120 and min(budgets) >= 8
    assert head_budgets("llama3-8b", 1, 120, 500, "uniform", window=8) == [120] * 8  # kv_size above the prompt
    with pytest.raises(ValueError, match="dist='zipf' is not supported"):
        head_budgets("llama3-8b", 1, 120, 64, "zipf", window=8)


def test_compare_is_relative_to_the_reference_and_strict_on_shape_and_nan() -> None:
    ref = torch.tensor([1.0, -4.0])
    assert compare(torch.tensor([1.0, -4.01]), ref, 1e-2) == (pytest.approx(0.01, abs=1e-6), True)
    assert not compare(torch.tensor([1.0, -4.1]), ref, 1e-2)[1]
    assert compare(torch.tensor([1.0]), ref, 1.0) == (math.inf, False)
    assert compare(torch.tensor([float("nan"), -4.0]), ref, 1.0) == (math.inf, False)
    assert compare((ref, torch.tensor([3], dtype=torch.int32)), (ref, torch.tensor([3])), 0.0)[1]
    assert compare((ref,), (ref, ref), 1.0) == (math.inf, False)


def test_assert_close_names_the_worst_element_and_accepts_what_compare_accepts() -> None:
    expected = torch.randn(4, 6, dtype=torch.float64)
    actual = expected.clone()
    actual[2, 3] += 0.5
    with pytest.raises(AssertionError, match=r"k_cache: max abs error 5\.000e-01 .* at \[2, 3\].* 1/24 elements"):
        assert_close(actual, expected, 1e-3, "k_cache")
    assert_close(actual, expected, 1.0)  # 0.5 <= 1.0 x max |expected|
    assert compare(actual, expected, 1.0)[1] and not compare(actual, expected, 1e-3)[1]
    with pytest.raises(AssertionError, match=r"shape \(4, 6\) != expected \(24,\)"):
        assert_close(actual, expected.flatten(), 1.0)


def test_gpu_slug() -> None:
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert gpu_slug("NVIDIA H200") == "h200"


def test_table_rows_are_fixed_width_and_right_aligned() -> None:
    configs = [{"model": "llama3-8b", "batch": 1}, {"model": "smollm2-135m", "batch": 16}]
    columns = config_columns(configs) + [("provider", lambda r: r["provider"], "{}")]
    columns += [(m, *METRIC_COLUMNS[m]) for m in ("p50_us", "speedup", "max_err")]
    table = Table(columns, config_widths(configs))
    rows = [{"config": configs[0], "provider": "triton", "ms_p50": 0.0123, "speedup": 2.5, "max_abs_err": 1e-3},
            {"config": configs[1], "provider": "torch_ref", "ms_p50": None, "speedup": None, "max_abs_err": None}]
    lines = [table.format_header()] + [table.format_row(r) for r in rows]
    assert len({len(line) for line in lines}) == 1
    assert lines[1].split() == ["llama3-8b", "1", "triton", "12.3", "2.50", "1.0e-03"]
    assert lines[2].endswith(" -")


def test_decode_bytes_count_kept_tokens_or_the_whole_prompt() -> None:
    config = bench_decode._config("llama3-8b", 2, 4096, 128, "uniform")
    q_and_out = 2 * 2 * 32 * 128 * 2
    assert bench_decode.nbytes(config, "triton") == 2 * 8 * 128 * 128 * 2 * 2 + q_and_out
    assert bench_decode.nbytes(config, "sdpa_full") == 2 * 8 * 4096 * 128 * 2 * 2 + q_and_out


def test_cli_rejects_unknown_providers_and_splits_commas() -> None:
    args = parse_args("decode", "t", ["--providers", "triton,torch_ref", "--full"], ["triton", "torch_ref"])
    assert args.providers == ["triton", "torch_ref"] and args.mode == "full"
    assert args.command == "python -m bench.bench_decode --providers triton,torch_ref --full"
    with pytest.raises(SystemExit):
        parse_args("decode", "t", ["--providers", "nope"], ["triton"])


def test_json_file_name_and_plot_from_it(tmp_path) -> None:
    """A document with made-up timings, in tmp_path only: checks the file naming and that the plot reads it."""
    env = environment("python -m bench.bench_decode --quick") | {"gpu_slug": "test-gpu",
                                                                    "timestamp": "2026-11-22T10:15:00Z"}
    config = bench_decode._config("llama3-8b", 1, 4096, 128, "uniform")
    rows = [{"config": config, "provider": p, "bytes": bench_decode.nbytes(config, p), "ms_p50": ms,
             "gbps": 1.0, "speedup": s} for p, ms, s in (("sdpa_full", 0.05, 1.0), ("triton", 0.01, 5.0))]
    doc = build_doc("decode", env, {"method": "test fixture"}, rows, ceiling={"gbps": 2.0}, baseline="sdpa_full")
    path = write_json(doc, tmp_path)
    assert path.name == "decode-test-gpu-20261122-101500.json"
    assert json.loads(path.read_text())["schema"] == SCHEMA
    png = plot.plot_file(path)
    assert png == tmp_path / "decode-test-gpu-20261122-101500.png" and png.stat().st_size > 0


def test_a_failing_or_wrong_provider_is_reported_and_the_others_still_run(capsys) -> None:
    from dataclasses import replace

    from bench import bench_append

    def broken(case):
        raise RuntimeError("boom")

    def wrong(case):
        return Bound(lambda: (case.k_new + 1, case.v_new, case.lens0 + 1))

    bench = replace(bench_append.BENCH, providers=[*bench_append.PROVIDERS, Provider("broken", "raises", broken),
                                                   Provider("wrong", "off by one", wrong)])
    report = kernel_run.run(bench, ["--dry-run"])
    assert report.exit_code == 1
    checks = {(r["config"]["model"], r["provider"]): r["check"] for r in report.doc["rows"]}
    assert {c for (_, p), c in checks.items() if p in ("triton", "torch_ref", "reconcat")} == {"ok"}
    assert {c for (_, p), c in checks.items() if p == "broken"} == {"error"}
    assert {c for (_, p), c in checks.items() if p == "wrong"} == {"fail"}
    assert "RuntimeError: boom" in capsys.readouterr().err


def test_the_timed_path_shares_equal_measurements_and_writes_the_json(tmp_path, monkeypatch) -> None:
    """The GPU path on the CPU with a stand-in timer (a fixed made-up 0.5 ms, written to tmp_path only)."""

    class FixedTimer:
        def __init__(self, *args) -> None:
            self.calls = 0

        def __call__(self, fn, reset=None) -> Measurement:
            self.calls += 1
            fn()
            return Measurement(0.5, 0.4, 0.6, 10, False)

        def describe(self) -> dict:
            return {"method": "stand-in"}

        def summary(self) -> str:
            return "stand-in timer"

    monkeypatch.setattr(kernel_run, "Timer", FixedTimer)
    monkeypatch.setattr(kernel_run, "copy_bandwidth", lambda timer: {"gbps": 100.0})
    monkeypatch.setattr(kernel_run, "peak_extra_bytes", lambda fn, reset=None: 0)
    args = parse_args("decode", "t", ["--out", str(tmp_path), "--providers", "sdpa_full,torch_ref"],
                        ["sdpa_full", "torch_ref"])
    args.mode = "dry"  # the tiny shapes
    report = kernel_run.run_parsed(bench_decode.BENCH, args)
    assert report.exit_code == 0 and report.path.parent == tmp_path
    rows = json.loads(report.path.read_text())["rows"]
    full = [r for r in rows if r["provider"] == "sdpa_full"]
    assert [r.get("shared", False) for r in full] == [False, True, False]  # same model/batch/prompt: measured once
    for r in rows:
        assert r["check"] == "ok" and r["speedup"] == 1.0 and r["baseline"] == "sdpa_full"
        assert r["gbps"] == pytest.approx(r["bytes"] / 0.5e-3 / 1e9)
        assert r["frac_copy"] == pytest.approx(r["gbps"] / 100.0)


def test_e2e_timed_path_measures_and_writes_the_json(tmp_path) -> None:
    """bench_e2e's GPU path run on the CPU with a tiny model (CPU wall-clock numbers, written to tmp_path only)."""
    args = parse_args("e2e", "t", ["--out", str(tmp_path), "--providers", "hf_static,hf_dynamic,snapkv", "--models",
                                     "tiny-llama", "--prompts", "64", "--batches", "1", "2", "--kv-size", "16",
                                     "--new-tokens", "4"],
                        bench_e2e.provider_ids(), bench_e2e._add_arguments, kernel=False)
    with one_cpu_thread():
        report = bench_e2e._run(args)
    assert report.exit_code == 0
    rows = json.loads(report.path.read_text())["rows"]
    assert [(r["provider"], r["config"]["batch"]) for r in rows] == [
        (p, b) for p in ("hf_static", "hf_dynamic", "snapkv") for b in (1, 2)]
    for r in rows:
        assert r["check"] == "ok" and r["generated"] == 4 and r["ttft_ms"] > 0 and r["kv_bytes"] > 0
        assert r["decode_tok_s"] == pytest.approx(r["config"]["batch"] * 1e3 / r["ms_per_token"])
    assert rows[-1]["kv_bytes"] < rows[0]["kv_bytes"]  # 16 of 64 tokens kept
    assert rows[-1]["speedup"] == pytest.approx(rows[-1]["decode_tok_s"] / rows[1]["decode_tok_s"])  # hf_static


def test_every_score_kind_is_declared_by_a_method_and_every_declaration_names_a_parameter() -> None:
    readers = kinds_read_by(METHODS.values())
    assert all(readers[kind] for kind in HEAD_SCORE_KINDS), readers  # score-heads computes nothing unused
    for name, cls in METHODS.items():
        assert set(cls.score_files) <= set(method_parameters(name)), name


@pytest.mark.parametrize("model", ["llama3-8b", "mistral-7b"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_e2e_score_lookup_builds_every_method_at_the_8b_shapes(model: str, method: str) -> None:
    """The e2e bench's lookup gives every method the score files it declares, and the method then plans a 32K
    prompt at kv_size 128 within the contract (the bug this guards: lookups by kind names the engine lacks)."""
    scores = bench_e2e.method_scores(model, method)
    assert set(scores.params) == set(METHODS[method].score_files)
    assert scores.label == ("synthetic" if METHODS[method].score_files else "-")  # no 8B scores are packaged
    shape = attention_shape(model)
    budgets = plan_budgets(get_method(method, **scores.params), shape, 32768, 128)
    kept = 32768 if method == "full" else 128
    assert int(budgets.sum()) == kept * shape.num_layers * shape.num_kv_heads


def test_e2e_score_lookup_uses_packaged_files_where_the_engine_ships_them() -> None:
    for method in ("headkv-r", "headkv-r2", "compresskv"):
        scores = bench_e2e.method_scores("smollm2-135m", method)
        assert scores.label == "packaged"
        get_method(method, **scores.params)  # the packaged files fit the method
        for param, kind in METHODS[method].score_files.items():
            assert scores.params[param].name == f"smollm2-135m-instruct-{kind}.json"


def test_e2e_plan_row_reports_a_method_that_cannot_be_built_as_an_error(monkeypatch) -> None:
    config = {"model": "llama3-8b", "prompt": 32768, "kv_size": 128, "new_tokens": 0}
    row = bench_e2e.plan_only(config, "headkv-r2")
    assert row["check"] == "ok" and row["scores"] == "synthetic"
    assert row["kv_bytes"] == 128 * 32 * 8 * 128 * 2 * 2  # kv_size tokens x layers x KV heads, bf16 K and V

    def unknown_kind(model: str, method: str):
        raise ValueError("kind='retrieval-reasoning-heads' is unknown")

    monkeypatch.setattr("bench.e2e.plan.method_scores", unknown_kind)  # where plan_only looks it up
    row = bench_e2e.plan_only(config, "headkv-r2")
    assert row["check"] == "error" and "retrieval-reasoning-heads" in row["error"]
