"""Property tests: for random shapes, prompt lengths, kv_sizes and score tables, every method's budgets stay within
`[min(window, prompt_len), prompt_len]` and (default, non-faithful mode) total exactly
`min(kv_size, prompt_len) * num_layers * num_kv_heads`, i.e. the nominal `kv_size * L * H_kv` whenever
`prompt_len >= kv_size`; `adapt` preserves layer totals; score files round-trip. Random (often hostile) method
parameters are refused at construction exactly when the method's `accepts` excludes them, with the error type and
message it promises, and accepted ones plan valid budgets."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raggedkv.engine.arguments import Choice, Flag, Int, Real
from raggedkv.engine.checks import check_kv_size
from raggedkv.engine.methods import METHODS, ModelShape, get_method
from raggedkv.engine.methods.allocation import fill_to_total, round_to_total
from raggedkv.engine.methods.head_scores import load_head_scores

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
score = st.one_of(st.just(0.0), st.floats(0.0, 10.0, allow_nan=False), st.floats(0.0, 1e-3))


@st.composite
def cases(draw):
    """A model shape, a prompt length, a kv_size and score tables that fit the shape."""
    layers = draw(st.integers(1, 6))
    kv_heads = draw(st.integers(1, 4))
    group = draw(st.integers(1, 3))
    head_table = draw(st.lists(score, min_size=layers * kv_heads * group, max_size=layers * kv_heads * group))
    layer_table = draw(st.lists(score, min_size=layers, max_size=layers))
    head_table[draw(st.integers(0, len(head_table) - 1))] += 1.0  # some importance somewhere
    layer_table[draw(st.integers(0, layers - 1))] += 1.0
    return {
        "shape": ModelShape(layers, kv_heads * group, kv_heads, 16),
        "prompt_len": draw(st.integers(1, 600)),
        "kv_size": draw(st.integers(1, 300)),
        "beta": draw(st.floats(1.0, 30.0)),
        "alpha": draw(st.floats(0.0, 1.0)),
        "heads": {f"{i // (kv_heads * group)}-{i % (kv_heads * group)}": [s] for i, s in enumerate(head_table)},
        "layers": {"avg_score": layer_table},
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def build(name: str, case: dict, faithful: bool):
    params = {
        "pyramidkv": {"beta": case["beta"], "faithful": faithful},
        "ada-snapkv": {"alpha": case["alpha"], "faithful": faithful},
        "headkv-r": {"head_scores": case["heads"], "beta": case["beta"], "faithful": faithful},
        "headkv-r2": {"head_scores": case["heads"], "beta": case["beta"], "faithful": faithful},
        "compresskv": {"layer_scores": case["layers"], "head_scores": case["heads"], "faithful": faithful},
    }.get(name, {})
    return get_method(name, **params)


def realised(method, case: dict) -> torch.Tensor:
    """`plan`, then `adapt` on every layer with random scores (the identity except for Ada-SnapKV)."""
    shape, n = case["shape"], case["prompt_len"]
    budgets = method.plan(shape, n, case["kv_size"])
    assert budgets.dtype == torch.int64 and budgets.shape == (shape.num_layers, shape.num_kv_heads)
    generator = torch.Generator().manual_seed(case["seed"])
    candidates = max(n - method.scoring.window, 0)
    rows = []
    for layer in range(shape.num_layers):
        scores = torch.rand(shape.num_kv_heads, candidates, generator=generator) ** 4
        row = method.adapt(layer, budgets[layer], scores)
        assert int(row.sum()) == int(budgets[layer].sum()), "adapt must keep the layer total"
        rows.append(row)
    return torch.stack(rows)


COMPRESSING = ["streamingllm", "snapkv", "pyramidkv", "ada-snapkv", "headkv-r", "headkv-r2", "compresskv"]


@SETTINGS
@given(case=cases())
def test_budgets_are_bounded_and_total_the_nominal(case):
    shape, n, kv_size = case["shape"], case["prompt_len"], case["kv_size"]
    for name in COMPRESSING:
        method = build(name, case, faithful=False)
        if kv_size < method.min_kv_size:
            with pytest.raises(ValueError, match=f"kv_size must be an int >= {method.min_kv_size} .*got {kv_size}"):
                check_kv_size(kv_size, method)
            continue
        budgets = realised(method, case)
        window = method.scoring.window
        assert int(budgets.min()) >= min(window, n), name
        assert int(budgets.max()) <= n, name
        assert int(budgets.sum()) == min(kv_size, n) * shape.num_layers * shape.num_kv_heads, name


@SETTINGS
@given(case=cases())
def test_faithful_budgets_are_bounded(case):
    n = case["prompt_len"]
    for name in ["pyramidkv", "ada-snapkv", "headkv-r", "headkv-r2", "compresskv"]:
        method = build(name, case, faithful=True)
        if case["kv_size"] < method.min_kv_size:
            continue
        budgets = realised(method, case)
        assert min(method.scoring.window, n) <= int(budgets.min()) and int(budgets.max()) <= n, name


@SETTINGS
@given(case=cases())
def test_full_keeps_the_prompt(case):
    assert (get_method("full").plan(case["shape"], case["prompt_len"], case["kv_size"]) == case["prompt_len"]).all()


@SETTINGS
@given(values=st.lists(st.floats(0.0, 50.0), min_size=1, max_size=40), data=st.data())
def test_round_to_total_and_fill_to_total(values, data):
    alloc = torch.tensor(values, dtype=torch.float64)
    upper = int(alloc.max().ceil()) + data.draw(st.integers(0, 5))
    total = int(alloc.sum().round())
    scaled = alloc * (total / alloc.sum()) if alloc.sum() > 0 else alloc
    if total and scaled.max() <= upper:
        rounded = round_to_total(scaled, total, upper)
        assert int(rounded.sum()) == total and ((rounded - scaled).abs() < 1).all()
    cap = data.draw(st.integers(0, upper))
    importance = torch.tensor(data.draw(st.lists(score, min_size=len(values), max_size=len(values))),
                              dtype=torch.float64)
    filled = fill_to_total(alloc, total, cap, importance)
    assert int(filled.sum()) == min(total, cap * len(values))
    assert int(filled.max()) <= cap
    assert (filled >= torch.minimum(alloc, torch.tensor(float(cap))).floor()).all(), "entries never decrease"


@SETTINGS
@given(means=st.lists(st.lists(st.floats(0.0, 5.0), min_size=3, max_size=3), min_size=1, max_size=4))
def test_head_score_files_round_trip(tmp_path_factory, means):
    path = tmp_path_factory.mktemp("scores") / "heads.json"
    path.write_text(json.dumps({f"{l}-{h}": [m, m] for l, row in enumerate(means) for h, m in enumerate(row)}))
    table = load_head_scores(path, ModelShape(len(means), 3, 1, 8))
    assert torch.allclose(table, torch.tensor(means, dtype=torch.float64))


# --- parameters: every method refuses what its `accepts` excludes, and plans valid budgets with what it accepts ----

hostile_value = st.one_of(
    st.integers(-3, 40),
    st.integers(-(10**30), 10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2.0, 40.0),
    st.booleans(),
    st.none(),
    st.sampled_from(["max", "avg", "sum", "mean", "median", "", "7"]),
)


def expected_error(accepted, value) -> type[Exception] | None:
    """What checking `value` against `accepted` must raise, worked out here independently of `arguments.py`."""
    if isinstance(accepted, Int):
        if type(value) is not int:
            return TypeError
        fits = value >= accepted.minimum and (not accepted.odd or value % 2 == 1)
        return None if fits else ValueError
    if isinstance(accepted, Real):
        if type(value) not in (int, float):
            return TypeError
        if abs(value) > sys.float_info.max or value != value:  # beyond the float range, or NaN
            return ValueError
        above_low = value > accepted.low if accepted.low_open else value >= accepted.low
        below_high = value < accepted.high if accepted.high_open else value <= accepted.high
        return None if above_low and below_high and math.isfinite(value) else ValueError
    if isinstance(accepted, Choice):
        if type(value) is not str:
            return TypeError
        return None if value in accepted.choices else ValueError
    assert isinstance(accepted, Flag)
    return None if type(value) is bool else TypeError


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases(), name=st.sampled_from(sorted(METHODS)), data=st.data())
def test_parameters_are_refused_or_give_valid_budgets(case, name, data):
    cls = METHODS[name]
    tunable = sorted(set(cls.accepts) - set(cls.score_files))  # score files come from `case`
    keys = data.draw(st.lists(st.sampled_from(tunable), unique=True, max_size=3)) if tunable else []
    params = {key: data.draw(hostile_value, label=key) for key in keys}
    calibrated = getattr(cls, "calibrated", {})  # None there means "read the calibrated value": accepted
    wrong = {key: None if value is None and key in calibrated else expected_error(cls.accepts[key], value)
             for key, value in params.items()}
    wrong = {key: error for key, error in wrong.items() if error is not None}
    sources = {"headkv-r": {"head_scores": case["heads"]}, "headkv-r2": {"head_scores": case["heads"]},
               "compresskv": {"head_scores": case["heads"], "layer_scores": case["layers"]}}.get(name, {})
    if wrong:
        with pytest.raises((TypeError, ValueError)) as info:
            get_method(name, **sources, **params)
        key = next((k for k in wrong if str(info.value).startswith(f"{k} must be ")), None)
        assert key is not None, (params, str(info.value))
        assert type(info.value) is wrong[key], (params, str(info.value))
        return
    method = get_method(name, **sources, **params)
    shape, n = case["shape"], case["prompt_len"]
    kv_size = max(case["kv_size"], method.min_kv_size)
    check_kv_size(kv_size, method)
    budgets = realised(method, {**case, "kv_size": kv_size}) if kv_size < n else None
    if budgets is not None:
        assert min(method.scoring.window, n) <= int(budgets.min()) and int(budgets.max()) <= n, (name, params)
        if not params.get("faithful", False) and name != "full":
            assert int(budgets.sum()) == kv_size * shape.num_layers * shape.num_kv_heads, (name, params)
