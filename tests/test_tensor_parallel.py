"""Tensor parallelism (`engine/parallel.py`): one `torchrun --nproc-per-node 2` launch (gloo, CPU) runs every method
on a tiny Llama and a tiny Mistral (8 query / 4 KV heads) with `tp_plan="auto"` (tests/tensor_parallel_worker.py);
its tokens and whole-model stats must equal single-process runs. Plus the slicing and balancing arithmetic."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from raggedkv.engine import Engine
from raggedkv.engine.methods import METHODS, get_method
from raggedkv.engine.methods.base import ModelShape
from raggedkv.engine.models import load_model
from raggedkv.engine.parallel import RankSplitMethod, TensorParallel
from raggedkv.engine.parallel_budgets import (
    adapted_rank_bound,
    balance_ranks,
    fit_rank_totals,
    rank_heads,
    rank_totals,
    rescale_block,
    slowest_rank_factor,
)

from . import tensor_parallel_worker as worker
from .engine_helpers import char_tokenizer, tiny_model

ROOT = Path(__file__).resolve().parents[1]
TP_SIZE = 2


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """Tiny Llama and Mistral (8 query / 4 KV heads, different weights), a tokenizer, and skewed score files."""
    folder = tmp_path_factory.mktemp("tp-models")
    for seed, family in enumerate(worker.MODELS):
        tiny_model(family, heads=8, kv_heads=4, seed=seed).save_pretrained(folder / family)
        char_tokenizer().save_pretrained(folder / family)
    generator = torch.Generator().manual_seed(3)
    skewed = torch.rand(2, 8, generator=generator) ** 3  # uneven head budgets, so rank totals differ
    heads = {f"{layer}-{head}": [float(skewed[layer, head])] for layer in range(2) for head in range(8)}
    (folder / "heads.json").write_text(json.dumps(heads))
    (folder / "layers.json").write_text(json.dumps({"avg_score": [1.0, 2.0]}))
    return folder


@pytest.fixture(scope="module")
def tp_report(models_dir) -> dict:
    """What rank 0 of the 2-rank run saw (one launch for every method and both models)."""
    torchrun = shutil.which("torchrun") or pytest.skip("torchrun is not installed")
    out = models_dir / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", str(TP_SIZE), str(ROOT / "tests" / "tensor_parallel_worker.py"),
         str(models_dir), str(out)],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny models' references on one intra-op thread: torch's thread pool on a shared, loaded CPU made
    them 60x slower (20 s against 0.3 s per model)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def loaded(folder: Path):
    """(model, tokenizer) of a saved tiny model, loaded once per test session."""
    return load_model(folder, device="cpu")


def single_process(models_dir: Path, family: str, method) -> list[dict]:
    engine = Engine.from_model(*loaded(models_dir / family), method=method, backend="torch")
    return worker.record(engine.generate_ids(worker.prompts(), kv_size=worker.KV_SIZE,
                                             max_new_tokens=worker.MAX_NEW_TOKENS))


def compare(tp_runs: list[dict], reference: list[dict]) -> None:
    """Tokens, the whole model's kept budgets and KV bytes as one process has them; the rank split of them."""
    for tp, ref in zip(tp_runs, reference, strict=True):
        assert tp["tokens"] == ref["tokens"]
        assert tp["kept"] == ref["kept"]
        assert tp["kv_bytes_kept"] == ref["kv_bytes_kept"]
        kept = torch.tensor(ref["kept"])
        assert tp["tensor_parallel"] == TP_SIZE
        assert tp["rank_kept_tokens"] == rank_totals(kept, TP_SIZE).sum(dim=0).tolist()
        assert tp["slowest_rank_factor"] == pytest.approx(slowest_rank_factor(kept, TP_SIZE))


@pytest.mark.parametrize("family", worker.MODELS)
def test_every_method_gives_the_single_process_tokens(tp_report, models_dir, family):
    """Every method, Ada-SnapKV's layer-wide adapt included, equals the plain single-process run; only Ada-SnapKV's
    regions hold spare rows (its reserve), so only it allocates more than one process does."""
    runs = tp_report[family]
    for method in sorted(METHODS):
        reference = single_process(models_dir, family, worker.build_method(method, models_dir))
        compare(runs[method], reference)
        allocated = [run["kv_bytes_allocated"] for run in runs[method]]
        expected = [run["kv_bytes_allocated"] for run in reference]
        if method == "ada-snapkv":
            assert all(e < a <= TP_SIZE * e for a, e in zip(allocated, expected))
        else:
            assert allocated == expected
    kept = torch.tensor(runs["headkv-r"][0]["kept"])
    assert slowest_rank_factor(kept, TP_SIZE) > 1.05  # the skewed scores do unbalance the ranks
    kept = torch.tensor(runs["ada-snapkv"][0]["kept"])
    assert not torch.equal(rank_totals(kept, TP_SIZE), rank_totals(torch.full_like(kept, worker.KV_SIZE), TP_SIZE))


def test_rank_balance_run_and_agreement_between_ranks(tp_report, models_dir):
    """The balanced run equals its single-process reference and is balanced up to rounding; every rank generated
    the same tokens, greedy and sampled (seed drawn on rank 0)."""
    name, epsilon = worker.BALANCED
    shape = ModelShape(2, 8, 4, 16)
    for family in worker.MODELS:
        runs = tp_report[family]
        reference = RankSplitMethod(worker.build_method(name, models_dir), shape, TP_SIZE, None, rank_balance=epsilon)
        compare(runs["balanced"], single_process(models_dir, family, reference))
        for run in runs["balanced"]:
            totals = rank_totals(torch.tensor(run["kept"]), TP_SIZE)
            assert bool(((totals.max(dim=1).values - totals.min(dim=1).values) <= 1).all())
        assert runs["greedy_ranks_agree"] and runs["sampled_ranks_agree"]


def random_budgets(layers: int, heads: int, low: int, high: int) -> torch.Tensor:
    """Skewed int64 budgets in [low, high]."""
    return (low + (torch.rand(layers, heads) ** 3) * (high - low)).round().to(torch.int64)


@pytest.mark.parametrize("size", [2, 3, 4])
def test_balance_ranks_keeps_totals_and_bounds_and_meets_the_cap(size):
    low, high, heads = 8, 300, 12
    budgets = random_budgets(20, heads, low, high)
    for epsilon in (0.0, 0.05, 0.2):
        balanced = balance_ranks(budgets, size, epsilon, low, high)
        assert torch.equal(balanced.sum(dim=1), budgets.sum(dim=1))
        assert int(balanced.min()) >= low and int(balanced.max()) <= high
        mean = budgets.sum(dim=1).double() / size
        cap = torch.maximum(mean.ceil(), ((1 + epsilon) * mean).floor())
        assert bool((rank_totals(balanced, size).double() <= cap[:, None]).all())
        untouched = rank_totals(budgets, size).max(dim=1).values.double() <= cap
        assert torch.equal(balanced[untouched], budgets[untouched])  # layers already under the cap stay as planned
    assert torch.equal(balance_ranks(budgets, size, 100.0, low, high), budgets)


def test_balance_ranks_redistributes_by_the_heads_own_weight():
    """Hand-checked: a rank over the cap shrinks its heads by their part above the window; the surplus goes to
    the other ranks' heads in proportion to theirs."""
    budgets = torch.tensor([[8, 88, 8, 8, 18, 28]])  # ranks of 2 heads: totals 96, 16, 46 (mean 52.67)
    balanced = balance_ranks(budgets, 3, 0.0, 8, 100)
    # cap 53, surplus 43: rank 2 holds all the weight above the window and fills to the cap (+7, split 1:2
    # between its heads); rank 1 (no weight) takes the other 36, equally; rank 0's 80 above the window shrink to 37
    assert rank_totals(balanced, 3).tolist() == [[53, 52, 53]]
    assert balanced.tolist() == [[8, 45, 26, 26, 20, 33]]


def test_rescale_and_fit_keep_sums_bounds_and_order():
    low, high = 8, 64
    for _ in range(50):
        block = random_budgets(1, 4, low, high)[0]
        target = int(torch.randint(4 * low, 4 * high + 1, ()))
        out = rescale_block(block, target, low, high)
        assert int(out.sum()) == target and int(out.min()) >= low and int(out.max()) <= high
        direction = 1 if target >= int(block.sum()) else -1
        assert bool(((out - block) * direction >= 0).all())  # every head moves the same way
    layer = random_budgets(1, 6, low, high)[0]
    targets = torch.tensor([30, 70, 50])
    fitted = fit_rank_totals(layer, targets, low, high)
    assert rank_totals(fitted, 3).tolist() == targets.tolist()
    with pytest.raises(ValueError, match="outside"):
        rescale_block(torch.tensor([8, 8]), 15, low, high)


def test_slicing_and_rank_arithmetic():
    assert rank_heads(8, 2, 1) == slice(4, 8) and rank_heads(9, 3, 0) == slice(0, 3)
    with pytest.raises(ValueError, match="do not split evenly"):
        rank_heads(9, 2, 0)
    budgets = torch.tensor([[10, 20, 30, 40], [5, 5, 5, 25]])
    assert rank_totals(budgets, 2).tolist() == [[30, 70], [10, 30]]
    assert slowest_rank_factor(budgets, 2) == pytest.approx((70 + 30) / (50 + 20))


def test_rank_split_slices_of_all_ranks_make_the_whole_plan(tmp_path):
    """Each rank's plan and query-head weights are its block of the whole model's; the slices add up."""
    shape = ModelShape(2, 8, 4, 16)
    heads = {f"{layer}-{head}": [float(1 + (3 * layer + head) % 7)] for layer in range(2) for head in range(8)}
    path = tmp_path / "heads.json"
    path.write_text(json.dumps(heads))
    layers = tmp_path / "layers.json"
    layers.write_text(json.dumps({"avg_score": [1.0, 3.0]}))
    for method in (get_method("headkv-r", head_scores=path),
                   get_method("compresskv", head_scores=path, layer_scores=layers)):
        whole = method.plan(shape, 100, 20)
        ranks = [RankSplitMethod(method, shape, 2, rank) for rank in range(2)]
        assert ranks[1].shape == ModelShape(2, 4, 2, 16)
        assert torch.equal(torch.cat([r.plan(r.shape, 100, 20) for r in ranks], dim=1), whole)
        assert torch.equal(RankSplitMethod(method, shape, 2, None).plan(shape, 100, 20), whole)
        weights = method.qo_head_weights(1)
        if weights is not None:
            assert torch.equal(torch.cat([r.qo_head_weights(1) for r in ranks]), weights)


def test_rank_balance_adapt_keeps_each_rank_total():
    """Ada-SnapKV with rank_balance: its layer-wide adapt, then each rank back to its planned (balanced) total."""
    shape = ModelShape(1, 8, 4, 16)
    method = RankSplitMethod(get_method("ada-snapkv"), shape, 2, None, rank_balance=0.0)
    planned = method.plan(shape, 60, 16)[0]
    scores = torch.rand(4, 52) ** 4
    adapted = method.adapt(0, planned, scores)
    assert rank_totals(adapted, 2).tolist() == rank_totals(planned, 2).tolist()
    assert int(adapted.min()) >= 8 and int(adapted.max()) <= 60


@pytest.mark.parametrize("faithful", [False, True])
def test_reserve_holds_every_adapted_rank_total(faithful):
    """The reserve (Ada-SnapKV's arithmetic; the generic bound when faithful) is never below what the layer-wide
    adapt gives a rank, over random skewed scores and several shapes, and never above the layer's total."""
    method = get_method("ada-snapkv", faithful=faithful)
    for kv_heads, size, prompt_len, kv_size, window in [(4, 2, 60, 16, 8), (8, 4, 200, 40, 8), (6, 3, 33, 12, 5),
                                                        (8, 2, 90, 9, 8), (12, 3, 400, 128, 16)]:
        method.scoring = replace(method.scoring, window=window)
        shape = ModelShape(2, 2 * kv_heads, kv_heads, 16)
        whole = RankSplitMethod(method, shape, size, None)
        planned = whole.plan(shape, prompt_len, kv_size)
        ranks = [RankSplitMethod(method, shape, size, rank) for rank in range(size)]
        reserves = torch.stack([r.reserve(prompt_len, kv_size) for r in ranks], dim=1)  # [L, size]
        assert bool((reserves >= rank_totals(planned, size)).all())
        assert bool((reserves <= planned.sum(dim=1, keepdim=True)).all())
        most = torch.zeros_like(reserves)
        for _ in range(40):
            skew = float(torch.empty(()).uniform_(1, 12))
            for layer in range(2):
                scores = torch.rand(kv_heads, prompt_len - window) ** skew
                scores[torch.randint(kv_heads, ())] *= float(torch.empty(()).uniform_(1, 50))  # one loud head
                adapted = whole.adapt(layer, planned[layer], scores)
                most[layer] = torch.maximum(most[layer], rank_totals(adapted, size))
        assert bool((most <= reserves).all()), (most.tolist(), reserves.tolist())
    assert RankSplitMethod(get_method("snapkv"), ModelShape(1, 8, 4, 16), 2, 0).reserve(60, 16) is None
    assert RankSplitMethod(method, ModelShape(1, 8, 4, 16), 2, 0).reserve(60, 60) is None
    assert RankSplitMethod(method, ModelShape(1, 8, 4, 16), 2, 0, rank_balance=0.1).reserve(60, 16) is None


def test_reserve_bound_arithmetic():
    """Hand-checked: 4 heads of 24 (window 8, prompt 60), alpha 0.2, 2 ranks: T = 64 selected tokens; a rank's
    heads get at most 0.8 * 64 + 0.2 * 64 / 2 = 57.6 -> 58, + 2 rounding, + 16 window rows = 76; the generic
    bound is 96 - 16 = 80."""
    planned = torch.full((1, 4), 24)
    assert adapted_rank_bound(planned, 2, 1, 8, 60, 0.2).tolist() == [76]
    assert adapted_rank_bound(planned, 2, 1, 8, 60).tolist() == [80]
    assert adapted_rank_bound(planned, 2, 0, 8, 30, 0.2).tolist() == [60]  # capped at 2 heads x 22 candidates


def test_refusals(tmp_path, monkeypatch):
    model = tiny_model("llama", heads=8, kv_heads=4)
    assert TensorParallel.of(model) is None
    with pytest.raises(ValueError, match="rank_balance=0.1 needs a tensor-parallel model"):
        Engine.from_model(model, method="snapkv", backend="torch", rank_balance=0.1)
    fake = SimpleNamespace(_tp_size=3, config=model.config)
    with pytest.raises(ValueError, match="divide by 3; this model has 8 query heads"):
        TensorParallel.of(fake)
    with pytest.raises(ValueError, match="rank_balance"):
        balance_ranks(torch.ones(1, 4, dtype=torch.int64), 2, -0.5, 0, 1)
    with pytest.raises(ValueError, match="goes without tp_plan"):
        load_model("/nonexistent", device="cpu", tp_plan="auto")
    model.config.save_pretrained(tmp_path)  # a config alone: refused before any weights are read
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="divide by 3; this model has 8 query heads"):
        load_model(tmp_path, tp_plan="auto")


def test_compressed_front_door_gives_the_engine_tokens(tp_report):
    """`raggedkv.compressed` + `model.generate` on the tensor-parallel model: the Engine's greedy tokens."""
    for family in worker.MODELS:
        for method in worker.COMPRESSED:
            assert tp_report[family][f"compressed:{method}"] == tp_report[family][method][0]["tokens"]
