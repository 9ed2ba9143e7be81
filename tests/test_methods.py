"""Compression methods: METHODS.md section 9 numbers, hand-computed budgets, score files, registry and CLI."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from raggedkv.engine.checks import check_kv_size
from raggedkv.engine.methods import METHODS, ModelShape, get_method, method_parameters
from raggedkv.engine.methods import head_scores as head_scores_module
from raggedkv.engine.methods.adakv import ada_capacities, head_shares
from raggedkv.engine.methods.compresskv import error_aware_layer_budgets, retrieval_head_weights
from raggedkv.engine.methods.head_scores import load_head_scores, load_layer_scores, model_slug
from raggedkv.engine.methods.headkv import head_probabilities, query_head_capacities
from raggedkv.engine.methods.pyramid import pyramid_capacities
from raggedkv.kernels import plan_segments, select_and_pack_ref

LLAMA3 = ModelShape(num_layers=32, num_qo_heads=32, num_kv_heads=8, head_dim=128)


def head_score_dict(means: list[list[float]]) -> dict[str, list[float]]:
    """HeadKV's JSON format with two trials per head whose mean is the given value."""
    return {f"{l}-{h}": [m - 0.5 * m, m + 0.5 * m] for l, row in enumerate(means) for h, m in enumerate(row)}


# --- PyramidKV (METHODS.md 3.2 and 9) -------------------------------------------------------------------------------

def test_pyramidkv_faithful_caps_are_234_minus_7l():
    caps = pyramid_capacities(32, 10_000, 128, 8, 20.0, faithful=True)
    assert caps.tolist() == [234 - 7 * l for l in range(32)]
    assert int(caps.sum()) == 4016


def test_pyramidkv_exact_total_is_nominal():
    budgets = get_method("pyramidkv").plan(LLAMA3, 10_000, 128)
    assert budgets.shape == (32, 8) and budgets.dtype == torch.int64
    assert int((budgets[:, 0] - 8).sum()) == 3840
    assert int(budgets.sum()) == 128 * 32 * 8
    assert (budgets == budgets[:, :1]).all(), "one budget per layer"
    assert (budgets[:-1, 0] >= budgets[1:, 0]).all(), "non-increasing with depth"
    assert int(budgets[0, 0]) - 8 == 234 and int(budgets[-1, 0]) - 8 == 6


def test_pyramidkv_faithful_plan_keeps_the_floored_step():
    budgets = get_method("pyramidkv", faithful=True).plan(LLAMA3, 10_000, 128)
    assert (budgets[:, 0] - 8).tolist() == [234 - 7 * l for l in range(32)]


def test_pyramidkv_short_prompts():
    method = get_method("pyramidkv")
    assert (method.plan(LLAMA3, 100, 128) == 100).all(), "n <= C: no compression"
    assert (method.plan(LLAMA3, 200, 128) == 128).all(), "C < n < 2B: uniform, as published"
    clamped = method.plan(LLAMA3, 241, 128)  # max = 2B - min = 234 >= n - w = 233: max clamped
    assert int(clamped.max()) == 241 and int(clamped.sum()) == 128 * 32 * 8


# --- Ada-SnapKV (METHODS.md 2 and 9) --------------------------------------------------------------------------------

def test_ada_shares_sum_exactly_and_published_rounding_error_is_at_most_half_h():
    heads, candidates, budget, alpha = 8, 500, 120, 0.2
    for _ in range(20):
        scores = torch.rand(heads, candidates) ** 4
        shares = head_shares(scores, heads * budget)
        assert int(shares.sum()) == heads * budget
        published = ada_capacities(shares, heads * budget, alpha, candidates, faithful=True)
        assert abs(int(published.sum()) - heads * budget) <= heads / 2
        exact = ada_capacities(shares, heads * budget, alpha, candidates, faithful=False)
        assert int(exact.sum()) == heads * budget
        assert ((exact - (shares * (1 - alpha) + alpha * budget)).abs() < 1).all()


def test_ada_shares_are_the_layer_wide_top_k():
    scores = torch.tensor([[9.0, 8.0, 1.0, 0.0], [7.0, 2.0, 3.0, 6.0]])
    assert head_shares(scores, 4).tolist() == [2, 2]
    assert head_shares(scores, 5).tolist() == [2, 3]


@pytest.mark.parametrize("faithful", [False, True])
def test_ada_adapt_preserves_the_layer_total(faithful):
    method = get_method("ada-snapkv", faithful=faithful)
    shape = ModelShape(4, 8, 4, 64)
    window = method.scoring.window
    budgets = method.plan(shape, 300, 96)
    scores = torch.rand(4, 300 - window) ** 6
    adapted = method.adapt(0, budgets[0], scores)
    assert int(adapted.sum()) == int(budgets[0].sum())
    assert (adapted >= window).all() and (adapted <= 300).all()
    assert not torch.equal(adapted, budgets[0]), "peaked random scores move budget"


def test_ada_alpha_one_is_uniform_and_short_prompts_are_untouched():
    method = get_method("ada-snapkv", alpha=1.0)
    budgets = method.plan(ModelShape(2, 4, 2, 64), 200, 64)
    assert torch.equal(method.adapt(0, budgets[0], torch.rand(2, 200 - 32)), budgets[0])
    short = method.plan(ModelShape(2, 4, 2, 64), 50, 64)
    assert torch.equal(method.adapt(0, short[0], torch.rand(2, 50 - 32)), short[0])


# --- StreamingLLM (METHODS.md 3.3) ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kv_size", [5, 12, 40])
def test_streamingllm_keeps_exactly_the_sinks_and_the_most_recent_tokens(kv_size):
    method = get_method("streamingllm")
    scoring = method.scoring
    n, shape = 50, ModelShape(2, 4, 2, 8)
    budgets = method.plan(shape, n, kv_size)
    assert (budgets == kv_size).all()
    # The engine's recency scores: +inf on the sinks, then increasing with position; the last `window` always kept.
    prefix = n - scoring.window
    scores = torch.arange(prefix, dtype=torch.float32)
    scores[: scoring.sinks] = float("inf")
    heads = shape.num_kv_heads
    positions = torch.arange(n, dtype=torch.float32)[None, :, None].expand(heads, n, 1).contiguous()
    plan = plan_segments(budgets[0], 0)
    k_cache = torch.full((plan.total_slots, 1), -1.0)
    v_cache = k_cache.clone()
    select_and_pack_ref(scores.expand(heads, prefix), budgets[0] - scoring.window, positions, positions, k_cache,
                        v_cache, plan.kv_indptr, plan.kv_lens)
    expected = list(range(4)) + list(range(n - (kv_size - 4), n))
    for h in range(heads):
        rows = k_cache[plan.kv_indptr[h]: plan.kv_indptr[h] + plan.kv_lens[h], 0]
        assert rows.to(torch.int64).tolist() == expected


def test_streamingllm_rejects_kv_size_without_room_for_recent_tokens():
    method = get_method("streamingllm")
    assert method.min_kv_size == 5 and get_method("streamingllm", sinks=0).min_kv_size == 1
    with pytest.raises(ValueError, match=r"kv_size must be an int >= 5 .*'streamingllm'.*got 4"):
        check_kv_size(4, method)
    check_kv_size(5, method)


# --- HeadKV (METHODS.md 1(b)) ---------------------------------------------------------------------------------------

# Mean scores per query head; L = 2 layers, 4 query heads, 2 KV heads (groups {0,1}, {2,3}). Sum = 8.
TABLE = [[1.0, 0.0, 2.0, 1.0], [0.0, 0.0, 3.0, 1.0]]
SMALL = ModelShape(num_layers=2, num_qo_heads=4, num_kv_heads=2, head_dim=16)


@pytest.mark.parametrize(
    ("beta", "query_caps", "kv_budgets"),
    [
        # B = 24 - 8 = 16, floor(16/2) = 8: cap = p * 8*2*4 + (16 - 8); KV: share * 8*2*2 + 8 + window 8.
        (2.0, [[16, 8, 24, 16], [8, 8, 32, 16]], [[20, 28], [16, 32]]),
        # floor(16/1.5) = 10: cap = p * 10*2*4 + 6; KV: share * 10*2*2 + 6 + 8.
        (1.5, [[16, 6, 26, 16], [6, 6, 36, 16]], [[19, 29], [14, 34]]),
    ],
)
def test_headkv_capacities_by_hand(beta, query_caps, kv_budgets):
    probs = head_probabilities(torch.tensor(TABLE, dtype=torch.float64))
    caps = query_head_capacities(probs, 16, beta)
    assert torch.allclose(caps, torch.tensor(query_caps, dtype=torch.float64))
    assert int(caps.sum()) == 2 * 4 * 16
    for faithful in (False, True):
        method = get_method("headkv-r2", head_scores=head_score_dict(TABLE), beta=beta, faithful=faithful)
        assert method.plan(SMALL, 1000, 24).tolist() == kv_budgets
    # The KV budget is the mean of the group's query-head capacities plus the window.
    assert torch.allclose(caps.view(2, 2, 2).mean(-1) + 8, torch.tensor(kv_budgets, dtype=torch.float64))


def test_headkv_published_rounding_is_half_to_even():
    probs = head_probabilities(torch.tensor([[1.0, 3.0]], dtype=torch.float64))
    caps = query_head_capacities(probs, 10, 2.0)  # floor(10/2) = 5: p * 10 + 5 = [7.5, 12.5]
    assert caps.tolist() == [[7.5, 12.5]]
    assert torch.round(caps).tolist() == [[8.0, 12.0]]


def test_headkv_faithful_truncates_and_default_redistributes():
    scores = head_score_dict(TABLE)
    faithful = get_method("headkv-r", head_scores=scores, beta=2.0, faithful=True).plan(SMALL, 30, 24)
    assert faithful.tolist() == [[20, 28], [16, 30]] and int(faithful.sum()) == 94
    # 2 tokens cut from (1, 1) go to the other heads by share: 1/8 and 3/8 -> +0.5, +1.5 -> round to 96.
    exact = get_method("headkv-r", head_scores=scores, beta=2.0).plan(SMALL, 30, 24)
    assert exact.tolist() == [[21, 29], [16, 30]] and int(exact.sum()) == 24 * 2 * 2


def test_headkv_needs_a_score_file(tmp_path, monkeypatch):
    monkeypatch.setattr(head_scores_module, "DATA_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="reasoning score file.*head_scores=.*score-heads --kind reasoning.*tiny-llama"):
        get_method("headkv-r2", model_name="org/Tiny-Llama")
    (tmp_path / "tiny-llama-retrieval.json").write_text(json.dumps(head_score_dict(TABLE)))
    method = get_method("headkv-r", model_name="org/Tiny-Llama")
    assert method.plan(SMALL, 1000, 24).shape == (2, 2)


def test_headkv_shape_mismatch_names_both_shapes():
    method = get_method("headkv-r", head_scores=head_score_dict(TABLE))
    with pytest.raises(ValueError, match=r"2 layers x 4 heads.*30 layers x 9 query heads"):
        method.check_shape(ModelShape(30, 9, 3, 64))
    method.check_shape(SMALL)


# --- CompressKV (METHODS.md 4) --------------------------------------------------------------------------------------

def test_compresskv_allocation_by_hand():
    # T = 64 * 4 = 256; 32 + round(s * 128) = 53, 53, 53, 96 (sum 255); +1 to the most important layer.
    scores = torch.tensor([1 / 6, 1 / 6, 1 / 6, 1 / 2], dtype=torch.float64)
    assert error_aware_layer_budgets(scores, 64, 32, 192).tolist() == [53, 53, 53, 97]
    # T = 512, max 384: 32 + round(0.97 * 384) = 405 -> 384; others 36; the 20 missing go +1 per pass to layers 1-3.
    scores = torch.tensor([0.97, 0.01, 0.01, 0.01], dtype=torch.float64)
    assert error_aware_layer_budgets(scores, 128, 32, 384).tolist() == [384, 43, 43, 42]


def test_compresskv_plan_and_scoring():
    layers = {"avg_score": [0.97, 0.01, 0.01, 0.01]}
    heads = head_score_dict([[0, 5, 1, 4, 3, 2], [6, 5, 4, 3, 2, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 9]])
    shape = ModelShape(num_layers=4, num_qo_heads=6, num_kv_heads=2, head_dim=16)
    method = get_method("compresskv", layer_scores=layers, head_scores=heads)
    budgets = method.plan(shape, 10_000, 128)
    assert budgets.tolist() == [[384, 384], [43, 43], [43, 43], [42, 42]]
    assert method.scoring.share_across_heads and method.scoring.group_reduce == "sum"
    assert (method.scoring.pool, method.scoring.pool_size, method.scoring.window_reduce) == ("avg", 5, "sum")
    assert method.qo_head_weights(0).tolist() == [0, 0.25, 0, 0.25, 0.25, 0.25]
    assert method.qo_head_weights(2).tolist() == [0.25, 0.25, 0.25, 0.25, 0, 0], "ties go to the lower head"
    # A 300-token prompt cannot hold layer 0's 384: faithful loses 84, the default gives them to the other layers.
    faithful = get_method("compresskv", layer_scores=layers, head_scores=heads, faithful=True).plan(shape, 300, 128)
    assert faithful[:, 0].tolist() == [300, 43, 43, 42]
    exact = method.plan(shape, 300, 128)
    assert exact[:, 0].tolist() == [300, 71, 71, 70] and int(exact.sum()) == 128 * 4 * 2


def test_retrieval_head_weights_with_fewer_heads_than_first_k():
    weights = retrieval_head_weights(torch.tensor([[1.0, 2.0]], dtype=torch.float64), 4)
    assert weights.tolist() == [[0.5, 0.5]]


def test_compresskv_layer_file_mismatch_names_both_shapes(tmp_path):
    path = tmp_path / "layers.json"
    path.write_text(json.dumps({"avg_score": [0.5, 0.5, 0.0], "narrativeqa": [1, 0, 0]}))
    assert load_layer_scores(path, ModelShape(3, 4, 2, 8)).tolist() == [0.5, 0.5, 0.0]
    method = get_method("compresskv", layer_scores=path, head_scores=head_score_dict(TABLE))
    with pytest.raises(ValueError, match=r"3 layers but the model has 2 layers"):
        method.check_shape(SMALL)


# --- score files ----------------------------------------------------------------------------------------------------

def test_head_score_file_round_trip(tmp_path):
    path = tmp_path / "scores.json"
    data = {"0-0": [1, 0.5], "0-1": [0, 0], "1-0": [2.0], "1-1": []}
    path.write_text(json.dumps(data))
    table = load_head_scores(path, ModelShape(2, 2, 1, 8))
    assert table.dtype == torch.float64 and table.tolist() == [[0.75, 0.0], [2.0, 0.0]]
    assert torch.equal(load_head_scores(data, ModelShape(2, 2, 1, 8)), table)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"0-0": [1], "0-1": [1], "1-0": [1]}, r"2 layers x 2 heads but lacks keys \['1-1'\]"),
        ({"0_0": [1]}, "not of the form 'layer-head'"),
        ({"0-0": "high"}, "must be a list of numbers"),
        ({"0-0": [-1.0]}, "non-negative"),
        ({}, "non-empty JSON object"),
    ],
)
def test_head_score_file_errors(data, message):
    with pytest.raises(ValueError, match=message):
        load_head_scores(data, ModelShape(2, 2, 1, 8))


def test_head_score_shape_error_names_both_shapes(tmp_path):
    path = tmp_path / "llama3.json"
    path.write_text(json.dumps({f"{l}-{h}": [1.0] for l in range(32) for h in range(32)}))
    with pytest.raises(ValueError, match=r"llama3.json.*32 layers x 32 heads.*30 layers x 9 query heads"):
        load_head_scores(path, ModelShape(30, 9, 3, 64))


def test_model_slug():
    assert model_slug("HuggingFaceTB/SmolLM2-135M-Instruct") == "smollm2-135m-instruct"
    assert model_slug("/cache/raggedkv/Mistral-7B-Instruct-v0.2/") == "mistral-7b-instruct-v0.2"


# --- registry -------------------------------------------------------------------------------------------------------

def test_registry_names():
    assert sorted(METHODS) == sorted(
        ["full", "streamingllm", "snapkv", "pyramidkv", "ada-snapkv", "headkv-r", "headkv-r2", "compresskv"]
    )


def test_unknown_method_and_parameter():
    with pytest.raises(ValueError, match=r"method='h2o' is unknown; choose one of \['ada-snapkv'"):
        get_method("h2o")
    with pytest.raises(ValueError, match="'snapkv' has no parameter 'beta'"):
        get_method("snapkv", beta=2.0)


def test_model_name_is_passed_only_where_used():
    assert get_method("snapkv", model_name="anything").plan(SMALL, 100, 16).tolist() == [[16, 16], [16, 16]]
    assert "model_name" not in method_parameters("headkv-r")


def test_kv_size_below_the_method_minimum_is_an_error():
    with pytest.raises(ValueError, match=r"kv_size must be an int >= 8 .*'snapkv'.*got 4"):
        check_kv_size(4, get_method("snapkv"))
    with pytest.raises(TypeError, match=r"kv_size must be an int >= 8 .*got 16.0"):
        check_kv_size(16.0, get_method("pyramidkv"))
    with pytest.raises(ValueError, match=r"kv_size must be an int >= 3 .*got 2"):
        check_kv_size(2, get_method("snapkv", window=3))
    with pytest.raises(TypeError, match=r"method must be a method name .* got 'snapkv'"):
        check_kv_size(16, "snapkv")
    assert get_method("full").min_kv_size == 1
    check_kv_size(1, get_method("full"))
    check_kv_size(None, get_method("snapkv"))


# --- parameters (issue 12's probes first) -----------------------------------------------------------------------------

def score_files_for(name: str) -> dict:
    """Score files that fit SMALL, for the methods that need them."""
    heads = head_score_dict(TABLE)
    return {"headkv-r": {"head_scores": heads}, "headkv-r2": {"head_scores": heads},
            "compresskv": {"head_scores": heads, "layer_scores": {"avg_score": [1.0, 2.0]}}}.get(name, {})


@pytest.mark.parametrize(
    ("name", "params", "error", "message"),
    [
        ("snapkv", {"window": 0}, ValueError, "window must be an int >= 1, got 0"),
        ("snapkv", {"window": -3}, ValueError, "window must be an int >= 1, got -3"),
        ("snapkv", {"pool_size": 6}, ValueError, "pool_size must be an odd int >= 1, got 6"),
        ("snapkv", {"pool": "median"}, ValueError, "pool must be one of ['max', 'avg'], got 'median'"),
        ("snapkv", {"window_reduce": "bogus"}, ValueError, "window_reduce must be one of ['sum', 'mean'], got 'bogus'"),
        ("snapkv", {"group_reduce": "bogus"}, ValueError,
         "group_reduce must be one of ['mean', 'max', 'sum'], got 'bogus'"),
        ("pyramidkv", {"beta": math.nan}, ValueError, "beta must be a finite number >= 1, got nan"),
        ("headkv-r", {"beta": math.nan}, ValueError, "beta must be a finite number >= 1, got nan"),
        ("headkv-r2", {"beta": math.nan}, ValueError, "beta must be a finite number >= 1, got nan"),
        ("pyramidkv", {"beta": math.inf}, ValueError, "beta must be a finite number >= 1, got inf"),
        ("headkv-r2", {"beta": 0.5}, ValueError, "beta must be a finite number >= 1, got 0.5"),
        ("headkv-r", {"temp": -1.0}, ValueError, "temp must be a finite number >= 0, got -1.0"),
        ("ada-snapkv", {"alpha": 1.5}, ValueError, "alpha must be a finite number in [0, 1], got 1.5"),
        ("ada-snapkv", {"alpha": -math.inf}, ValueError, "alpha must be a finite number in [0, 1], got -inf"),
        ("streamingllm", {"sinks": -1}, ValueError, "sinks must be an int >= 0, got -1"),
        ("compresskv", {"first_k": 0}, ValueError, "first_k must be an int >= 1, got 0"),
        ("compresskv", {"min_tokens": -1}, ValueError, "min_tokens must be an int >= 0, got -1"),
        ("compresskv", {"max_ratio": 0.99}, ValueError, "max_ratio must be a finite number >= 1, got 0.99"),
        ("compresskv", {"pool_size": 4}, ValueError, "pool_size must be an odd int >= 1, got 4"),
        ("full", {"window": 0}, ValueError, "window must be an int >= 1, got 0"),
        ("snapkv", {"window": 8.0}, TypeError, "window must be an int >= 1, got 8.0"),
        ("snapkv", {"pool_size": True}, TypeError, "pool_size must be an odd int >= 1, got True"),
        ("snapkv", {"pool": None}, TypeError, "pool must be one of ['max', 'avg'], got None"),
        ("pyramidkv", {"beta": "20"}, TypeError, "beta must be a finite number >= 1, got '20'"),
        ("ada-snapkv", {"alpha": False}, TypeError, "alpha must be a finite number in [0, 1], got False"),
        ("headkv-r", {"faithful": 1}, TypeError, "faithful must be True or False, got 1"),
        ("streamingllm", {"sinks": 4.0}, TypeError, "sinks must be an int >= 0, got 4.0"),
        ("compresskv", {"max_ratio": 10**400}, ValueError, "max_ratio must be a finite number >= 1"),
        ("headkv-r2", {"head_scores": 5}, TypeError, "head_scores must be a path (str or os.PathLike), a dict or None"),
        ("compresskv", {"layer_scores": [1.0]}, TypeError, "layer_scores must be a path (str or os.PathLike), a dict"),
    ],
)
def test_bad_parameters_are_refused_at_construction(name, params, error, message):
    with pytest.raises(error) as info:
        get_method(name, **{**score_files_for(name), **params})
    assert str(info.value).startswith(message)


def test_pool_size_six_is_refused_not_rounded_up():
    assert get_method("snapkv", pool_size=5).scoring.pool_size == 5
    with pytest.raises(ValueError, match="pool_size must be an odd int"):
        get_method("snapkv", pool_size=6)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_parameter_states_what_it_accepts_and_its_default_passes(name):
    cls = METHODS[name]
    for key, default in method_parameters(name).items():
        if key in cls.score_files:
            assert default is None, (name, key)
            continue
        if key in getattr(cls, "calibrated", {}):  # None: read from the calibrated-defaults sidecar
            assert default is None and key in cls.accepts, (name, key)
            continue
        assert key in cls.accepts, f"{name}.accepts does not declare {key!r}"
        assert cls.accepts[key].check(key, default) == default
    assert set(cls.accepts) <= set(method_parameters(name)), "accepts names only constructor parameters"


def test_method_name_must_be_a_string():
    with pytest.raises(TypeError, match=r"method must be a method name \(one of \['ada-snapkv'.*got \['snapkv'\]"):
        get_method(["snapkv"])


def test_head_probabilities_stay_finite_for_any_temp():
    table = torch.tensor([[1.0, 0.0, 2.0, 1e-3]], dtype=torch.float64)
    for temp in (0.0, 1.0, 1e3, 1e300):
        probs = head_probabilities(table, temp)
        assert torch.isfinite(probs).all() and math.isclose(float(probs.sum()), 1.0), temp
    assert head_probabilities(table, 0.0).tolist() == [[0.25] * 4]
    assert head_probabilities(table, 1e300).tolist() == [[0.0, 0.0, 1.0, 0.0]]
    expected = (table / table.sum()) ** 2
    assert torch.allclose(head_probabilities(table, 2.0), expected / expected.sum(), rtol=1e-12, atol=0)


def test_full_keeps_everything():
    assert (get_method("full").plan(SMALL, 77, 8) == 77).all()


# --- CLI ------------------------------------------------------------------------------------------------------------

def cli_parser() -> argparse.ArgumentParser:
    from raggedkv.engine.methods.commands import register

    parser = argparse.ArgumentParser(prog="raggedkv")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_methods_lists_every_method_and_its_defaults(capsys):
    args = cli_parser().parse_args(["methods"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for name in METHODS:
        assert f"\n{name} " in f"\n{out}"
    assert "beta=None" in out and "alpha=0.2" in out and "sinks=4" in out and "first_k=4" in out
    lines = [" ".join(line.split()) for line in out.splitlines()]
    for shown in ["pool_size=7 an odd int >= 1", "pool='max' one of ['max', 'avg']", "beta=20.0 a finite number >= 1",
                  "alpha=0.2 a finite number in [0, 1]",
                  "beta=None a finite number >= 1; None: calibrated per kv_size from engine/data/<model>-defaults.json "
                  "(the value of the largest calibrated kv_size at or below, else the smallest's), 1.01 without one", "faithful=False True or False", "sinks=4 an int >= 0",
                  "head_scores=None a score file of kind 'reasoning' (a path or dict); None: the packaged one for "
                  "the model"]:
        assert shown in lines, shown
    from raggedkv.engine.methods.defaults import calibrated_table

    for method in ("headkv-r", "headkv-r2"):  # the shipped calibrated betas, under the method's parameters
        table = calibrated_table("smollm2-135m-instruct", method, "beta")
        shown = "smollm2-135m-instruct: " + ", ".join(f"{v:g} at kv_size {k}" for k, v in sorted(table.items()))
        beta_line = lines.index(" ".join(f"{method} {METHODS[method].description}".split())) + 2
        assert lines[beta_line].startswith("beta=None") and lines[beta_line + 1] == shown


def test_cli_reads_prompt_files(tmp_path):
    from raggedkv.engine.methods.commands import read_prompts

    text = tmp_path / "prompts.txt"
    text.write_text("first prompt\n\nsecond prompt\n")
    assert read_prompts(text) == ["first prompt", "second prompt"]
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('"plain"\n{"prompt": "a", "set": "qa"}\n{"text": "b", "set": "sum"}\n{"input": "c"}\n')
    assert read_prompts(jsonl) == {"prompts": ["plain", "c"], "qa": ["a"], "sum": ["b"]}
