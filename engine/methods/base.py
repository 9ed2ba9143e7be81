"""The contract between a compression method (a budget policy) and the engine.

A method decides two things for every layer of a sequence:

* **how many tokens each KV head keeps** (its budget, window included, as `kv_size` means in the papers), and
* **how tokens are scored** before the top-`budget` selection (`Scoring`).

A method checks its parameters when it is built, against what its `accepts` declares (`Scoring` its fields). Before
any planning, whatever the prompt, the engine refuses a `kv_size` below `method.min_kv_size` and calls
`method.check_shape(shape)`. Then, per sequence:

1. `method.plan(shape, prompt_len, kv_size)` before prefill: int64 `[num_layers, num_kv_heads]` budgets. The row
   sums are the layer totals the cache allocates; they never change afterwards.
2. For every layer, after its full-attention prefill: the window scores of that layer (fp32
   `[num_kv_heads, prompt_len - window]`, computed as `method.scoring` says, with
   `method.qo_head_weights(layer)` applied), then `method.adapt(layer, budgets[layer], scores)` (adaptive methods
   move budget between the layer's heads; the row sum must stay the same), then select + pack.

Budgets are always between `min(window, prompt_len)` and `prompt_len`: a head never holds more tokens than the
prompt has, and it always holds the observation window.

A prompt that ends with a chat template's assistant header (the question-aware window, `compress.with_header`):
the engine hands `plan` and `adapt` a shallow copy of the method whose `scoring.window` is `window + header`, so
every head keeps the header and the window, scores cover the `prompt_len - window - header` tokens before them,
and `kv_size` (and `min_kv_size`) count the header too. Methods need nothing for it.

Totals: every compressing method realises exactly `min(kv_size, prompt_len) * num_layers * num_kv_heads` tokens
per sequence (the nominal `kv_size * num_layers * num_kv_heads` whenever `prompt_len >= kv_size`; with a shorter
prompt every head keeps the whole prompt). Where a published formula gives a head more than the prompt holds, the
surplus goes to the other heads by the method's own importance. `faithful=True` (PyramidKV, HeadKV, CompressKV)
reproduces the published arithmetic instead, budget loss or excess included, for comparison (Ada-SnapKV's
`faithful` uses the published formula but still keeps `adapt`'s layer totals). `full` keeps `prompt_len`
everywhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from raggedkv.kernels.window_scores import GROUP_REDUCES, POOLS, WINDOW_REDUCES

from ..arguments import Accepted, Choice, Flag, Int

SCORING_ACCEPTS: dict[str, Accepted] = {  # what every `Scoring` field accepts (the kernels' choices)
    "kind": Choice(("window", "recency")),
    "window": Int(1),
    "window_reduce": Choice(WINDOW_REDUCES),
    "group_reduce": Choice(GROUP_REDUCES),
    "pool": Choice(POOLS),
    "pool_size": Int(1, odd=True),
    "share_across_heads": Flag(),
    "sinks": Int(0),
}


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The attention shape of a decoder-only model, as the methods need it."""

    num_layers: int
    num_qo_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.num_qo_heads // self.num_kv_heads


@dataclass(frozen=True, slots=True)
class Scoring:
    """How prompt tokens are scored before each head keeps its top-`budget` tokens.

    kind:
        ``"window"``: observation-window attention (SnapKV core; `raggedkv.kernels.window_scores`).
        ``"recency"``: positional scores, first `sinks` tokens highest, then the most recent (StreamingLLM).
    window: observation-window size `w >= 1`; the last `w` prompt tokens are always kept.
    window_reduce: ``"sum"`` or ``"mean"`` over the window's queries.
    group_reduce: ``"mean"``, ``"max"`` or ``"sum"`` over the query heads of a GQA group.
    pool: ``"max"`` or ``"avg"`` 1-D pooling, stride 1, padding `pool_size // 2` (torch's pool1d semantics).
    pool_size: odd pooling kernel size >= 1 (1 disables pooling).
    share_across_heads: if True, the KV heads' score rows are summed into one row that every KV head of the
        layer selects by (CompressKV).
    sinks: number of leading tokens (>= 0) a ``"recency"`` scoring always keeps.

    Every field is checked against `SCORING_ACCEPTS` when a `Scoring` is built (TypeError for a wrong type,
    ValueError for a value outside the range or choices), so a method's bad parameter is refused at construction,
    the same on every backend.
    """

    kind: Literal["window", "recency"] = "window"
    window: int = 8
    window_reduce: Literal["sum", "mean"] = "mean"
    group_reduce: Literal["mean", "max", "sum"] = "mean"
    pool: Literal["max", "avg"] = "max"
    pool_size: int = 7
    share_across_heads: bool = False
    sinks: int = 4

    def __post_init__(self) -> None:
        for field, accepted in SCORING_ACCEPTS.items():
            accepted.check(field, getattr(self, field))


def scoring_accepts(*fields: str) -> dict[str, Accepted]:
    """`SCORING_ACCEPTS` restricted to the `Scoring` fields a method exposes as parameters."""
    return {field: SCORING_ACCEPTS[field] for field in fields}


class Method(ABC):
    """A compression method: per-layer, per-KV-head budgets and a scoring variant."""

    name: ClassVar[str]
    description: ClassVar[str]
    # What each constructor parameter accepts; the constructor checks with these.
    accepts: ClassVar[dict[str, Accepted]] = {}
    # Score files the constructor reads: parameter -> kind (`head_scores.SCORE_KINDS`); None reads the packaged one.
    score_files: ClassVar[dict[str, str]] = {}
    scoring: Scoring

    @property
    def min_kv_size(self) -> int:
        """The least `kv_size` this method can honour: its observation window (every head keeps the window).

        The engine refuses a smaller `kv_size` before planning (`raggedkv.engine.checks.check_kv_size`), whatever
        the prompt's length, so `plan` may assume `kv_size >= min_kv_size`.
        """
        return self.scoring.window

    @property
    def label(self) -> str:
        """How results name this method: `name`, or the canonical variant spelling `get_method` built it from."""
        return self.__dict__.get("_label", self.name)

    @label.setter
    def label(self, spelling: str) -> None:
        self._label = spelling

    def accept(self, name: str, value: object) -> object:
        """`value` checked against `self.accepts[name]` (TypeError / ValueError naming the parameter)."""
        return self.accepts[name].check(name, value)

    def check_shape(self, shape: ModelShape) -> None:
        """Raise ValueError if this method cannot plan for a model of `shape` (e.g. a score file made for another
        model). Nothing to check by default."""

    @abstractmethod
    def plan(self, shape: ModelShape, prompt_len: int, kv_size: int) -> torch.Tensor:
        """Budgets before prefill.

        Args:
            shape: the model's attention shape.
            prompt_len: tokens in this sequence's prompt, >= 1.
            kv_size: average tokens kept per head per layer, window included; an int >= `min_kv_size`.

        Returns:
            int64 `[num_layers, num_kv_heads]` on the CPU, each entry in `[min(window, prompt_len), prompt_len]`.
        """

    def adapt(self, layer: int, budgets: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Move budget between the heads of one layer once its scores are known (identity by default).

        Args:
            layer: layer index.
            budgets: int64 `[num_kv_heads]`, this layer's row of `plan`.
            scores: fp32 `[num_kv_heads, prompt_len - window]` pooled window scores (any device).

        Returns:
            int64 `[num_kv_heads]` on `budgets`' device with the same sum and the same bounds as `plan`.
        """
        return budgets

    def qo_head_weights(self, layer: int) -> torch.Tensor | None:
        """fp32 `[num_qo_heads]` weights on each query head's window scores in `layer`, or None for all ones."""
        return None

