"""Reading offline score files: per-head scores (HeadKV's format) and per-layer scores (CompressKV's format).

Head scores: one JSON object `{"<layer>-<head>": [score per accepted trial, ...], ...}` at query-head
granularity, as HeadKV's `Important_Head/head_score/*.json` and CompressKV's SRH files. A head's importance is the
mean of its list (an empty list counts as 0). Layer scores: a JSON object with `"avg_score": [one float per layer]`
(CompressKV's `scores/<model>_layer_score.jsonl`, which is a single JSON object despite its name).

Score kinds (their one home is the torch-free `score_kinds.py`; this module re-exports them):
`HEAD_SCORE_KINDS` are what `raggedkv score-heads --kind` computes (the scoring runner and its CLI choices read
them), `LAYER_SCORE_KIND` what `raggedkv calibrate-layers` computes. Each method declares the files it reads in
`Method.score_files` (constructor parameter -> kind); the engine, the benches and `raggedkv methods` read that
declaration. Packaged files live in `raggedkv/engine/data/<model-slug>-<kind>.json`, `kind` one of `SCORE_KINDS`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import torch

from .base import Method, ModelShape
from .score_kinds import HEAD_SCORE_KINDS, LAYER_SCORE_KIND, SCORE_KINDS

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
ScoreSource = str | Path | dict[str, Any]

_HEAD_KEY = re.compile(r"^(\d+)-(\d+)$")


def model_slug(model_name: str) -> str:
    """`"HuggingFaceTB/SmolLM2-135M-Instruct"` or a local folder `.../smollm2-135m-instruct` ->
    `"smollm2-135m-instruct"`: the last path component, lower-cased, other characters than `[a-z0-9.]` -> `-`."""
    last = Path(str(model_name).rstrip("/\\")).name.lower()
    return re.sub(r"[^a-z0-9.]+", "-", last).strip("-")


def kinds_read_by(methods: Iterable[type[Method]]) -> dict[str, list[str]]:
    """Every score kind -> the names of the methods whose `score_files` read it (in `methods`' order)."""
    readers: dict[str, list[str]] = {kind: [] for kind in SCORE_KINDS}
    for method in methods:
        for param, kind in method.score_files.items():
            if kind not in readers:
                raise ValueError(f"{method.__name__}.score_files[{param!r}]={kind!r} is unknown; "
                                 f"choose one of {SCORE_KINDS}")
            readers[kind].append(method.name)
    return readers


def packaged_score_file(model_name: str | None, kind: str) -> Path | None:
    """The packaged `data/<model-slug>-<kind>.json` for this model, or None if there is none."""
    if kind not in SCORE_KINDS:
        raise ValueError(f"kind={kind!r} is unknown; choose one of {SCORE_KINDS}")
    if model_name is None:
        return None
    path = DATA_DIR / f"{model_slug(model_name)}-{kind}.json"
    return path if path.is_file() else None


def resolve_score_source(source: ScoreSource | None, model_name: str | None, kind: str, method: str,
                         param: str) -> ScoreSource:
    """`source` if given, else the packaged file for `model_name`; otherwise a FileNotFoundError saying what to pass."""
    if source is not None:
        return source
    packaged = packaged_score_file(model_name, kind)
    if packaged is not None:
        return packaged
    model = model_slug(model_name) if model_name else "<model-slug>"
    how = ("raggedkv calibrate-layers" if kind == LAYER_SCORE_KIND
           else f"raggedkv score-heads --kind {kind}")
    raise FileNotFoundError(
        f"method {method!r} needs a {kind} score file: pass {param}=<path or dict>, computed with `{how}` "
        f"(model {model_name!r} has no packaged {DATA_DIR / f'{model}-{kind}.json'})"
    )


def describe_source(source: ScoreSource) -> str:
    """How error messages name a score source: the quoted path, or "(dict)"."""
    return "(dict)" if isinstance(source, dict) else repr(str(source))


def _read_json(source: ScoreSource) -> tuple[Any, str]:
    if isinstance(source, dict):
        return source, describe_source(source)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"score file {str(path)!r} does not exist")
    with path.open(encoding="utf-8") as handle:
        return json.load(handle), describe_source(source)


def _check_values(values: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise ValueError(f"{what} must hold finite, non-negative scores")


def read_head_scores(source: ScoreSource) -> torch.Tensor:
    """Mean score of every query head: fp64 `[layers, heads]`, the grid the file's keys span.

    Raises:
        ValueError: a key not of the form "layer-head", a value that is not a list of numbers, a hole in the
            layer x head grid, or a negative / non-finite score.
    """
    data, where = _read_json(source)
    if not isinstance(data, dict) or not data:
        raise ValueError(f"head-score file {where} must be a non-empty JSON object {{'layer-head': [scores]}}")
    means: dict[tuple[int, int], float] = {}
    for key, trials in data.items():
        match = _HEAD_KEY.match(str(key))
        if match is None:
            raise ValueError(f"head-score file {where}: key {key!r} is not of the form 'layer-head'")
        if not isinstance(trials, list) or not all(isinstance(t, int | float) and not isinstance(t, bool)
                                                  for t in trials):
            raise ValueError(f"head-score file {where}: value of {key!r} must be a list of numbers")
        means[int(match[1]), int(match[2])] = math.fsum(trials) / len(trials) if trials else 0.0
    layers = 1 + max(layer for layer, _ in means)
    heads = 1 + max(head for _, head in means)
    if len(means) != layers * heads:
        missing = [f"{l}-{h}" for l in range(layers) for h in range(heads) if (l, h) not in means]
        raise ValueError(f"head-score file {where} spans {layers} layers x {heads} heads but lacks keys "
                         f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
    table = torch.zeros(layers, heads, dtype=torch.float64)
    for (layer, head), value in means.items():
        table[layer, head] = value
    _check_values(table, f"head-score file {where}")
    return table


def check_head_table(table: torch.Tensor, shape: ModelShape, what: str = "head-score file") -> None:
    """Raise ValueError naming both shapes unless `table` is `[num_layers, num_qo_heads]`."""
    if tuple(table.shape) != (shape.num_layers, shape.num_qo_heads):
        raise ValueError(
            f"{what} has {table.shape[0]} layers x {table.shape[1]} heads but the model has "
            f"{shape.num_layers} layers x {shape.num_qo_heads} query heads"
        )


def load_head_scores(source: ScoreSource, shape: ModelShape) -> torch.Tensor:
    """Mean score per query head, fp64 `[num_layers, num_qo_heads]`, validated against the model's shape."""
    table = read_head_scores(source)
    check_head_table(table, shape, f"head-score file {describe_source(source)}")
    return table


def read_layer_scores(source: ScoreSource) -> torch.Tensor:
    """The `"avg_score"` list of a layer-score file, fp64 `[layers]`."""
    data, where = _read_json(source)
    scores = data.get("avg_score") if isinstance(data, dict) else None
    if not isinstance(scores, list) or not scores or not all(
        isinstance(s, int | float) and not isinstance(s, bool) for s in scores
    ):
        raise ValueError(f"layer-score file {where} must be a JSON object with 'avg_score': [one number per layer]")
    table = torch.tensor(scores, dtype=torch.float64)
    _check_values(table, f"layer-score file {where}")
    return table


def check_layer_table(table: torch.Tensor, shape: ModelShape, what: str = "layer-score file") -> None:
    """Raise ValueError naming both shapes unless `table` has one score per layer."""
    if table.numel() != shape.num_layers:
        raise ValueError(
            f"{what} has {table.numel()} layers but the model has {shape.num_layers} layers"
        )


def load_layer_scores(source: ScoreSource, shape: ModelShape) -> torch.Tensor:
    """`avg_score` per layer, fp64 `[num_layers]`, validated against the model's shape."""
    table = read_layer_scores(source)
    check_layer_table(table, shape, f"layer-score file {describe_source(source)}")
    return table
