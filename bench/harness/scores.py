"""The score files HeadKV and CompressKV read in the end-to-end bench: packaged where the engine ships them, else
synthetic, for every file the method declares (`Method.score_files`: constructor parameter -> score kind).

Packaged: `engine/data/<slug>-<kind>.json` of the released checkpoint of the shape (`CHECKPOINTS`).
Synthetic, of the shape's size, seed 0: per-head kinds get HeadKV-like skew (log-normal head importance,
sigma 1.5), the layer-score kind a uniform draw in [0.5, 1.5) per layer. Speed and memory depend on how skewed the
budgets are, not on which heads are important, so synthetic scores time the method faithfully.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raggedkv.engine.default_model import DEFAULT_MODEL
from raggedkv.engine.methods import METHODS
from raggedkv.engine.methods.base import ModelShape
from raggedkv.engine.methods.head_scores import LAYER_SCORE_KIND, packaged_score_file

from .shapes import attention_shape

# Released checkpoints of each shape in `shapes.MODELS`: where the engine ships a score file for one, it is used.
CHECKPOINTS = {"llama3-8b": "meta-llama/Meta-Llama-3-8B-Instruct", "mistral-7b": "mistralai/Mistral-7B-Instruct-v0.2",
               "smollm2-135m": DEFAULT_MODEL}

SYNTHETIC_HEADS = "synthetic (log-normal head importance, sigma 1.5, seed 0)"
SYNTHETIC_LAYERS = "synthetic (uniform in [0.5, 1.5) per layer, seed 0)"


@dataclass(frozen=True, slots=True)
class MethodScores:
    """What a method is built with in the bench.

    params: constructor parameter -> a packaged file's path or a synthetic score dict (empty: reads no file).
    sources: constructor parameter -> `"packaged <file name>"`, `SYNTHETIC_HEADS` or `SYNTHETIC_LAYERS`.
    """

    params: dict[str, Path | dict[str, Any]]
    sources: dict[str, str]

    @property
    def label(self) -> str:
        """The table's `scores` cell: `-` (no score file), `packaged`, `synthetic` or `mixed`."""
        kinds = {source.split()[0] for source in self.sources.values()}
        return "-" if not kinds else kinds.pop() if len(kinds) == 1 else "mixed"

    def describe(self) -> str | None:
        """The JSON's description: `"<parameter>: <source>; ..."`, or None when the method reads no file."""
        return "; ".join(f"{param}: {source}" for param, source in self.sources.items()) or None


def synthetic_scores(kind: str, shape: ModelShape) -> dict[str, Any]:
    """A score dict of `kind` in the engine's file format for a model of `shape` (see the module docstring)."""
    gen = torch.Generator().manual_seed(0)
    if kind == LAYER_SCORE_KIND:
        return {"avg_score": (0.5 + torch.rand(shape.num_layers, generator=gen, dtype=torch.float64)).tolist()}
    importance = torch.exp(1.5 * torch.randn(shape.num_layers, shape.num_qo_heads, generator=gen,
                                             dtype=torch.float64))
    return {f"{layer}-{head}": [float(importance[layer, head])]
            for layer in range(shape.num_layers) for head in range(shape.num_qo_heads)}


def method_scores(model: str, method: str) -> MethodScores:
    """The score files `method` reads when the bench runs it on the named model shape.

    Raises:
        ValueError: an unknown method or model shape.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; choose one of {sorted(METHODS)}")
    shape = attention_shape(model)
    params: dict[str, Path | dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for param, kind in METHODS[method].score_files.items():
        packaged = packaged_score_file(CHECKPOINTS.get(model), kind)
        if packaged is not None:
            params[param], sources[param] = packaged, f"packaged {packaged.name}"
        else:
            synthetic = SYNTHETIC_LAYERS if kind == LAYER_SCORE_KIND else SYNTHETIC_HEADS
            params[param], sources[param] = synthetic_scores(kind, shape), synthetic
    return MethodScores(params, sources)
